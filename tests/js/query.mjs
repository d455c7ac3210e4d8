// Stock @qdrant/js-client-rest against `hark serve`: a hark Document query, and no version warning.
// Usage: node query.mjs URL [API_KEY]; prints one JSON line {"points": n, "warnings": [...]}.
import { QdrantClient } from "@qdrant/js-client-rest";

const warnings = [];
const warn = console.warn;
console.warn = (...args) => { warnings.push(args.join(" ")); };
const [url, apiKey] = process.argv.slice(2);
const client = new QdrantClient({ url, apiKey, checkCompatibility: true });
const result = await client.query("sounds", { query: { text: "a dog barks", model: "hark" }, limit: 3 });
await new Promise((resolve) => setTimeout(resolve, 500)); // the version check runs in the background
console.warn = warn;
console.log(JSON.stringify({ points: result.points.length, warnings }));
