"""Captions that state a temporal order, and the same caption with its order reversed.

`swap_order("A dog barks, then a bell rings.")` gives "A bell rings, then a dog barks.": the clauses that
sequence connectives separate ("then", "followed by", "afterwards", "after that", "next", "later",
"subsequently", "finally", "before", "after", ...) are put in reverse order while every connective and an
opening marker ("first", "to begin with", "after", "once" + comma) stays where it was. So the swapped
caption has the same words and the same grammar and differs from the original only in which event comes
first: a hard negative that only an order-aware model can tell apart.

Captions that state no order get None: simultaneity ("while", "as", "meanwhile"), a bare list ("A and B"),
"then" without a clause on both sides ("now and then", "Then a dog barks"), and time phrases after
"after"/"before" ("after a while", "one after another").
"""

from __future__ import annotations

import re

# Between two clauses. Longer forms first, so ", and then" wins over " then". "before"/"after" are handled
# apart: they may only join two clauses (see _split_binary).
_CONNECTIVES = [
    r",?\s+and\s+then\s+",
    r",\s*then\s+",
    r"\s+then\s+",
    r",?\s+followed\s+by\s+",
    r",?\s+and\s+afterwards?\s+",
    r",\s*afterwards?\s+",
    r",?\s+and\s+after\s+that\s+",
    r",\s*after\s+that\s+",
    r",\s*after\s+which\s+",
    r",?\s+and\s+next\s+",
    r",\s*next\s+",
    r",?\s+and\s+later\s+",
    r",\s*later\s+",
    r"[,;]?\s+(?:and\s+)?subsequently\s+",
    r",?\s+and\s+(?:finally|lastly|eventually)\s+",
    r",\s*(?:finally|lastly|eventually)\s+",
    r",?\s+and\s+at\s+the\s+end\s+",
    r",\s*at\s+the\s+end\s+",
]
_SPLIT = re.compile("(" + "|".join(_CONNECTIVES) + ")", re.IGNORECASE)
_BINARY = re.compile(r"(\s+(?:before|after)\s+)", re.IGNORECASE)
# An opening marker that stays at the front: "first", "to begin with", ...
_PREFIX = re.compile(r"^(?:at\s+first|first(?:ly)?|initially|to\s+(?:begin|start)\s+with|in\s+the\s+beginning)"
                     r",?\s+", re.IGNORECASE)
# "After A, B" / "Before A, B" / "Once A, B": the opening word binds the first clause, the comma ends it.
_OPENING = re.compile(r"^((?:after|before|once)\s+)([^,;]+?)(,\s*)(.+)$", re.IGNORECASE)
# Uses of the connective words that do not join two events in time.
_IDIOMS = re.compile(
    r"\b(?:now\s+and\s+then|then\s+again|back\s+then|since\s+then|until\s+then|by\s+then|and\s+then\s+some"
    r"|before\s+and\s+after|after\s+and\s+before|one\s+after\s+(?:another|the\s+other)"
    r"|(?:shortly|soon|right|just|long|not\s+long)\s+(?:before|after)"
    r"|(?:after|before)\s+(?:a\s+(?:short\s+|long\s+|little\s+)?(?:while|moment|bit|pause|second|minute|few|couple)"
    r"|some\s+time|several|\d+|one|two|three|four|five|ten|seconds?|minutes?|it|each|every))\b"
    r"|\bonce\s+(?:again|more)\b",
    re.IGNORECASE)
_END = re.compile(r"[.!?]+\s*$")


def _words(clause: str) -> int:
    return len(re.findall(r"[A-Za-z0-9']+", clause))


def _split_binary(body: str) -> list[str] | None:
    parts = _BINARY.split(body)
    if len(parts) != 3:  # no "before"/"after", or more than one (too ambiguous to reverse)
        return None
    if re.match(r"(?:that|this|which)\b", parts[2], re.IGNORECASE):  # "after that" without its comma
        return None
    return parts


def _reverse(parts: list[str]) -> list[str]:
    """[clause, connective, clause, ...] -> the clauses in reverse order, connectives in place."""
    clauses = parts[0::2][::-1]
    out = list(parts)
    out[0::2] = clauses
    return out


def _case_like(text: str, template: str) -> str:
    """`text` with its first letter in the case of `template`'s first letter."""
    if not text or not template:
        return text
    first = text.split(" ", 1)[0]
    if template[0].isupper():
        return text[0].upper() + text[1:]
    if first == "I" or (len(first) > 1 and first.isupper()):
        return text
    return text[0].lower() + text[1:]


def _parse(caption: str) -> tuple[str, list[str], str, str, str] | None:
    """(prefix, [clause, connective, clause, ...], how, tail, lead) of a caption that states an order, else None.

    `how` says how textual order maps to time: "text" (the clauses happen in the order they are written),
    "reversed" ("A after B": B first; "Before A, B": B first).
    """
    text = caption.strip()
    if not text or _IDIOMS.search(text):
        return None
    end = _END.search(text)
    tail = end.group(0).strip() if end else ""
    body = text[: end.start()] if end else text
    prefix = ""
    match = _PREFIX.match(body)
    if match:
        prefix, body = body[: match.end()], body[match.end():]
    how = "text"
    opening = _OPENING.match(body) if not prefix else None
    if opening:
        word, first, comma, rest = opening.groups()
        parts = [first, comma, rest]
        prefix = word
        how = "reversed" if word.strip().lower() == "before" else "text"
    else:
        parts = _SPLIT.split(body)
        if len(parts) < 3:
            parts = _split_binary(body) or []
            if len(parts) == 3 and parts[1].strip().lower() == "after":
                how = "reversed"
    if len(parts) < 3 or any(_words(p) == 0 for p in parts[0::2]):
        return None
    return prefix, parts, how, tail, prefix or parts[0]


def swap_order(caption: str) -> str | None:
    """The caption with the order of its events reversed, or None if it states no order."""
    parsed = _parse(caption)
    if parsed is None:
        return None
    prefix, parts, _, tail, lead = parsed
    swapped = _reverse(parts)
    # The clause that moves to the front takes the sentence's capital; the one that leaves it loses it.
    swapped = [_case_like(p, "a") if i % 2 == 0 else p for i, p in enumerate(swapped)]
    out = prefix + "".join(swapped)
    out = _case_like(out, lead) + tail
    return None if out.lower() == caption.strip().lower() else out


def ordered_events(caption: str) -> list[str] | None:
    """The events a caption puts in order, earliest first ("A bell rings after a dog barks." -> ["a dog barks",
    "a bell rings"]), or None if it states no order (the same captions as `swap_order`)."""
    parsed = _parse(caption)
    if parsed is None:
        return None
    _, parts, how, _, _ = parsed
    clauses = [_case_like(p.strip(), "a") for p in parts[0::2]]
    return clauses[::-1] if how == "reversed" else clauses
