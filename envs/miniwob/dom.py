"""The DOM as text: miniwob's `dom_elements` become `Element`s, rendered one line per element for the model.

Listing: one line per element that has text or is a form control, e.g.
`[7] input_text value="" @(7,78 128x21)` (ref, tag, text, value or checked state, left,top widthxheight).
Text pseudo-elements (negative refs, renumbered every step) are merged into their parent's text; pure
wrappers and empty decorations are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envs.miniwob.actions import quote


@dataclass
class Element:
    """One element of the page, as the teacher and the listing see it."""

    ref: int
    parent: int
    tag: str  # lower case; inputs carry their type, e.g. "input_text"
    text: str  # own text, or its text pseudo-elements' text joined
    value: str  # inputs: the text; checkboxes/radios: "True" or ""
    classes: str
    left: int
    top: int
    width: int
    height: int
    focused: bool


_CONTROLS = ("input", "button", "a", "select", "textarea", "option")


def dom_elements(raw: tuple[dict[str, Any], ...]) -> dict[int, Element]:
    """ref -> Element for miniwob's `dom_elements`, text pseudo-elements merged into their parents."""
    els: dict[int, Element] = {}
    for d in raw:
        text = " ".join(str(d["text"]).split())
        if d["ref"] < 0:
            if d["parent"] in els and text:
                p = els[d["parent"]]
                p.text = f"{p.text} {text}".strip()
            continue
        els[d["ref"]] = Element(d["ref"], d["parent"], d["tag"], text, str(d["value"]), d["classes"],
                                round(float(d["left"][0])), round(float(d["top"][0])), round(float(d["width"][0])),
                                round(float(d["height"][0])), bool(d["flags"][0]))
    return els


def render_dom(els: dict[int, Element], max_lines: int = 60, max_text: int = 50) -> str:
    """The compact DOM listing shown to the model (see the module docstring)."""
    lines = []
    for e in els.values():
        control = e.tag.split("_")[0] in _CONTROLS
        if not (e.text or control):
            continue
        parts = [f"[{e.ref}] {e.tag}"]
        if e.text:
            parts.append(quote(e.text if len(e.text) <= max_text else e.text[:max_text - 3] + "..."))
        if e.tag in ("input_checkbox", "input_radio"):
            parts.append("checked" if e.value == "True" else "unchecked")
        elif e.tag.startswith("input") or e.tag == "textarea":
            parts.append(f"value={quote(e.value[:max_text])}")
        if e.focused:
            parts.append("focused")
        parts.append(f"@({e.left},{e.top} {e.width}x{e.height})")
        lines.append(" ".join(parts))
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more elements)"]
    return "\n".join(lines)
