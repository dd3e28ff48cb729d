"""The action grammar: the one place in bioworld where perturbation strings are parsed.

Grammar (one *label* per perturbation group)::

    label      := "control" | component ("+" component)*
    component  := GENE                      knockout (same as ko:GENE)
                | "ko:" GENE                knockout
                | "kd:" GENE [":" STRENGTH] knockdown; STRENGTH in (0, 1], default 1
                | "act:" GENE               activation (CRISPRa / overexpression)
                | "silence:" ENTITY         clamp an entity (pathway, program, regulon) off
                | NAME "@" DOSE             compound at DOSE (a number >= 0, in the data's unit)

- Prefixes are case-insensitive (``KO:STAT1`` = ``ko:STAT1``); names are case-sensitive.
- The control labels (default ``control``, ``ctrl``, ``non-targeting``, ``DMSO``) stand alone;
  the GEARS form ``A+ctrl`` means ``A``.
- A name is written bare when it has no ``+``, ``@``, ``"``, ``:`` (``silence:`` entities may
  contain ``:``, e.g. ``silence:GO:0006954``), and no whitespace at its edges (gene names none at
  all). Any other name is written in double quotes: ``silence:"Ca2+-pathway"``, ``"odd:name"@1``.
  Names never contain ``"``.
- Knockdown strength is *relative to the knockdown seen in the data*: ``kd:A`` (= ``kd:A:1``) is
  the observed knockdown, ``kd:A:0.5`` half of it. Knockouts, activations and silencing have
  strength 1.

`Action.label` is the canonical form: ``control``, or the components' canonical strings sorted
and joined by ``+``, with plain knockouts written as the bare gene (``IFNGR1+STAT1``). Parsing a
label gives back an equal `Action` (under the default control labels).
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Literal, Sequence

from bioworld.errors import PerturbationParseError

Kind = Literal["ko", "kd", "act", "compound", "silence"]

KINDS: tuple[str, ...] = ("ko", "kd", "act", "compound", "silence")
GENE_KINDS: frozenset[str] = frozenset({"ko", "kd", "act"})
#: Prefixes written before ``:`` (compounds use ``NAME@DOSE`` instead).
PREFIXES: tuple[str, ...] = ("ko", "kd", "act", "silence")
DEFAULT_CONTROL_LABELS: tuple[str, ...] = ("control", "ctrl", "non-targeting", "DMSO")
#: The GEARS "no perturbation" component, allowed inside a combination (``A+ctrl`` = ``A``).
GEARS_CTRL = "ctrl"
CONTROL_LABEL = "control"

_GRAMMAR_HINT = (
    "GENE, ko:GENE, kd:GENE[:STRENGTH], act:GENE, silence:ENTITY or NAME@DOSE, "
    "joined by '+' for combinations, or 'control'"
)
# Prefix look-alikes users write; only used to suggest the right prefix in error messages.
_PREFIX_HINTS = {
    "knockout": "ko", "crispr": "ko", "crispri": "kd", "knockdown": "kd", "sirna": "kd", "shrna": "kd",
    "i": "kd", "crispra": "act", "a": "act", "oe": "act", "overexpression": "act", "activate": "act",
    "activation": "act", "silenced": "silence", "off": "silence", "clamp": "silence",
}
_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]-?[0-9]+)?")
_NUMBER_WITH_UNIT = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]-?[0-9]+)?\s*([A-Za-zµμ%/]+)")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_QUOTE = '"'


def _fail(found: str, expected: str, fix: str) -> PerturbationParseError:
    return PerturbationParseError(f"{found}; expected {expected}. Fix: {fix}")


def _format_number(x: float) -> str:
    """Shortest string that parses back to exactly ``x`` and never contains ``+``."""
    text = repr(float(x)).replace("e+", "e")
    return text[:-2] if text.endswith(".0") else text


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str):
        raise _fail(f"{what} {name!r} of type {type(name).__name__}", "a string", "Pass the name as a str.")
    if not name:
        raise _fail(f"an empty {what}", "a non-empty name", "Give the name after the prefix / before '@'.")
    if name != name.strip():
        raise _fail(
            f"{what} {name!r} with whitespace at its edges", "a name without leading/trailing whitespace",
            f"Use {name.strip()!r}.",
        )
    if _QUOTE in name:
        raise _fail(f"{what} {name!r} containing '\"'", "a name without double quotes", "Remove the quotes.")
    if _CONTROL_CHARS.search(name):
        raise _fail(
            f"{what} {name!r} containing control characters (tab, newline, ...)", "printable characters",
            "Clean the label, e.g. adata.obs[key].str.replace(r'\\s+', ' ', regex=True).",
        )
    return name


def _needs_quotes(name: str, kind: str) -> bool:
    if any(c in name for c in "+@"):
        return True
    if ":" in name and kind != "silence":
        return True
    return kind in GENE_KINDS and any(c.isspace() for c in name)


def _render_name(name: str, kind: str) -> str:
    return f'{_QUOTE}{name}{_QUOTE}' if _needs_quotes(name, kind) else name


@dataclass(frozen=True)
class Perturbation:
    """One component of an action.

    Parameters
    ----------
    kind
        ``"ko"`` knockout, ``"kd"`` knockdown, ``"act"`` activation, ``"compound"`` or
        ``"silence"`` (clamp an entity off).
    target
        Gene symbol (ko/kd/act), compound name, or entity name (silence).
    strength
        Knockdown strength in (0, 1], relative to the knockdown observed in the data; must be 1
        for every other kind.
    dose
        Compound dose (>= 0, in the data's unit); required for compounds, ``None`` otherwise.

    ``str()`` gives the canonical string: ``ko:STAT1``, ``kd:STAT1:0.5``, ``act:X``,
    ``vemurafenib@3.33``, ``silence:HALLMARK_X``.
    """

    kind: Kind
    target: str
    strength: float = 1.0
    dose: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise _fail(f"perturbation kind {self.kind!r}", f"one of {list(KINDS)}", "Use one of those kinds.")
        _check_name(self.target, "target")
        strength = _as_finite_float(self.strength, "strength")
        if self.kind == "kd":
            if not 0.0 < strength <= 1.0:
                raise _fail(
                    f"knockdown strength {strength!r} for {self.target!r}", "a number in (0, 1]",
                    "Use e.g. kd:GENE:0.5; for a full loss of function use ko:GENE.",
                )
        elif strength != 1.0:
            raise _fail(
                f"strength {strength!r} for a {self.kind!r} perturbation of {self.target!r}",
                "strength 1 (only knockdowns take a strength)",
                f"For a partial loss of function write kd:{self.target}:{_format_number(strength)}.",
            )
        object.__setattr__(self, "strength", strength)
        if self.kind == "compound":
            if self.dose is None:
                raise _fail(
                    f"compound {self.target!r} without a dose", "a dose >= 0",
                    f"Give one, e.g. Perturbation('compound', {self.target!r}, dose=1.0).",
                )
            dose = _as_finite_float(self.dose, "dose")
            if dose < 0:
                raise _fail(f"negative dose {dose!r} for {self.target!r}", "a dose >= 0", "Use a non-negative dose.")
            object.__setattr__(self, "dose", dose + 0.0)  # -0.0 -> 0.0
        elif self.dose is not None:
            raise _fail(
                f"dose {self.dose!r} on a {self.kind!r} perturbation of {self.target!r}",
                "a dose only on compounds", "Drop the dose, or use kind='compound'.",
            )

    @property
    def is_gene(self) -> bool:
        """True for ko / kd / act (the target is a gene symbol)."""
        return self.kind in GENE_KINDS

    def __str__(self) -> str:
        name = _render_name(self.target, self.kind)
        if self.kind == "compound":
            return f"{name}@{_format_number(self.dose)}"  # type: ignore[arg-type]
        if self.kind == "kd" and self.strength != 1.0:
            return f"kd:{name}:{_format_number(self.strength)}"
        return f"{self.kind}:{name}"

    @property
    def label(self) -> str:
        """The component as written in an action label (a plain knockout is the bare gene)."""
        if self.kind == "ko" and not _needs_quotes(self.target, "ko") and not _looks_like_control(
            self.target, DEFAULT_CONTROL_LABELS
        ):
            return self.target
        return str(self)


def _as_finite_float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(f"{what} {value!r} of type {type(value).__name__}", "a number", f"Pass the {what} as a float.")
    out = float(value)
    if not math.isfinite(out):
        raise _fail(f"{what} {out!r}", "a finite number", f"Replace NaN/inf {what}s before building actions.")
    return out


def _family(p: Perturbation) -> str:
    return "gene" if p.is_gene else p.kind


@dataclass(frozen=True)
class Action:
    """A perturbation action: zero (control) or more `Perturbation` components.

    Components are kept sorted by their label form, so two actions with the same components are
    equal whatever order they were given in. A target may appear only once per action.
    """

    components: tuple[Perturbation, ...] = field(default=())

    def __post_init__(self) -> None:
        comps = tuple(self.components)
        for p in comps:
            if not isinstance(p, Perturbation):
                raise _fail(
                    f"component {p!r} of type {type(p).__name__}", "Perturbation objects",
                    "Build actions with parse_action('...') or Action((Perturbation(...), ...)).",
                )
        seen: dict[tuple[str, str], Perturbation] = {}
        for p in comps:
            key = (_family(p), p.target)
            if key in seen:
                first = seen[key]
                if first == p:
                    raise _fail(
                        f"component {p.label!r} twice", "each component once",
                        "Remove the duplicate component.",
                    )
                raise _fail(
                    f"{key[0]} {p.target!r} perturbed twice ({first.label!r} and {p.label!r})",
                    "each target once per action", "Keep one of the two components.",
                )
            seen[key] = p
        object.__setattr__(self, "components", tuple(sorted(comps, key=lambda p: p.label)))

    @property
    def is_control(self) -> bool:
        """True for the empty (control) action."""
        return not self.components

    @property
    def label(self) -> str:
        """Canonical label: ``control`` or the sorted component labels joined by ``+``."""
        if not self.components:
            return CONTROL_LABEL
        return "+".join(p.label for p in self.components)

    @property
    def genes(self) -> tuple[str, ...]:
        """Targets of ko / kd / act components."""
        return tuple(p.target for p in self.components if p.is_gene)

    @property
    def compounds(self) -> tuple[str, ...]:
        """Names of compound components (doses are on the components)."""
        return tuple(p.target for p in self.components if p.kind == "compound")

    @property
    def entities(self) -> tuple[str, ...]:
        """Targets of silence components."""
        return tuple(p.target for p in self.components if p.kind == "silence")

    def __len__(self) -> int:
        return len(self.components)

    def __iter__(self):
        return iter(self.components)

    def __str__(self) -> str:
        return self.label


#: The control action (no perturbation).
CONTROL = Action(())


def _looks_like_control(token: str, control_labels: Sequence[str]) -> bool:
    low = token.lower()
    return any(low == c.lower() for c in control_labels)


def _split_components(label: str) -> list[str]:
    """Split on ``+`` outside double quotes."""
    parts, buf, quoted = [], [], False
    for ch in label:
        if ch == _QUOTE:
            quoted = not quoted
        if ch == "+" and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    if quoted:
        raise _fail(
            f"unbalanced double quote in {label!r}", "quoted names to be closed, e.g. silence:\"Ca2+-pathway\"",
            "Add the closing '\"'.",
        )
    parts.append("".join(buf))
    return parts


def _take_name(text: str, kind: str, component: str) -> tuple[str, str]:
    """Read a (bare or quoted) name at the start of ``text``; return (name, rest after it)."""
    if text.startswith(_QUOTE):
        end = text.find(_QUOTE, 1)
        name, rest = text[1:end], text[end + 1:]
        if not name:
            raise _fail(f"empty quoted name in {component!r}", "a name between the quotes", "Put the name inside.")
        _check_name(name, "name")
        return name, rest
    if _QUOTE in text:
        raise _fail(
            f"a '\"' inside the name in {component!r}", "a quote only around a whole name",
            'Quote the whole name, e.g. silence:"Ca2+-pathway".',
        )
    return text, ""


def _parse_strength(text: str, component: str, gene: str) -> float:
    if not text:
        raise _fail(f"empty strength in {component!r}", "a number in (0, 1] after the second ':'",
                    f"Write kd:{gene}:0.5, or kd:{gene} for the observed knockdown.")
    if text.startswith("-"):
        raise _fail(f"negative strength {text!r} in {component!r}", "a number in (0, 1]", f"Use e.g. kd:{gene}:0.5.")
    if not _NUMBER.fullmatch(text):
        raise _fail(f"strength {text!r} in {component!r} is not a number", "a number in (0, 1]",
                    f"Use e.g. kd:{gene}:0.5.")
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise _fail(f"strength {text} in {component!r}", "a number in (0, 1] (fraction of the observed knockdown)",
                    f"Use e.g. kd:{gene}:0.5; for a full loss of function write ko:{gene}.")
    return value


def _unit_example(text: str, name: str) -> str:
    """The label a dose with a unit becomes: in µM for a molar unit (a dose column written with units is read in
    µM), else the number alone (``10uM`` -> ``NAME@10``, ``100nM`` -> ``NAME@0.1``)."""
    import numpy as np

    from bioworld.data._doses import parse_doses

    dose, with_unit, _ = parse_doses([text])
    if with_unit[0]:
        value = np.format_float_positional(float(dose[0]), trim="-")
        return f"e.g. {name}@{value} when the data's doses are in µM (as doses written with units are read)"
    number = text[: _NUMBER_WITH_UNIT.fullmatch(text).start(1)].strip()
    return f"e.g. {name}@{number}"


def _parse_dose(text: str, component: str, name: str) -> float:
    if not text:
        raise _fail(f"empty dose in {component!r}", "a number >= 0 after '@'", f"Write e.g. {name}@1.")
    if text.startswith("-"):
        raise _fail(f"negative dose {text!r} in {component!r}", "a dose >= 0", "Use a non-negative dose.")
    if _NUMBER.fullmatch(text):
        return float(text)
    unit = _NUMBER_WITH_UNIT.fullmatch(text)
    if unit:
        raise _fail(
            f"dose {text!r} with a unit suffix {unit.group(1)!r} in {component!r}",
            "a plain number in the data's dose unit",
            f"Convert to the unit of your data's dose column and drop the suffix, {_unit_example(text, name)}.",
        )
    raise _fail(f"dose {text!r} in {component!r} is not a number", "a plain number >= 0 (e.g. 0.5, 10, 1e-3)",
                f"Write e.g. {name}@1.")


def _unknown_prefix(head: str, component: str) -> PerturbationParseError:
    low = head.lower()
    guess = _PREFIX_HINTS.get(low)
    if guess is None:
        close = difflib.get_close_matches(low, PREFIXES, n=1, cutoff=0.6)
        guess = close[0] if close else None
    if guess:
        fix = f"Did you mean {guess + ':' + component[len(head) + 1:]!r}?"
    else:
        fix = (f"To silence an entity with that name write silence:{component}; quote other names containing "
               f"':', e.g. \"{component}\"@1 for a compound.")
    return _fail(
        f"unknown prefix {head + ':'!r} in {component!r}",
        f"one of {', '.join(p + ':' for p in PREFIXES)} (compounds are written NAME@DOSE)", fix,
    )


def _parse_component(comp: str, label: str) -> Perturbation:
    if not comp:
        raise _fail(f"an empty component in {label!r}", "components separated by single '+'",
                    "Remove the extra '+' (e.g. 'A++B' -> 'A+B').")
    if comp != comp.strip():
        raise _fail(f"whitespace around component {comp!r} in {label!r}", "no spaces around '+'",
                    f"Write {'+'.join(c.strip() for c in _split_components(label))!r}.")
    if comp.startswith(_QUOTE):
        name, rest = _take_name(comp, "ko", comp)
        if not rest:
            return Perturbation("ko", name)
        if rest.startswith("@"):
            return Perturbation("compound", name, dose=_parse_dose(rest[1:], comp, _render_name(name, "compound")))
        raise _fail(f"unexpected text {rest!r} after the quoted name in {comp!r}",
                    "nothing (a gene) or @DOSE (a compound)", 'Write e.g. "name"@1.')
    head, colon, rest = comp.partition(":")
    if colon and "@" not in head and head.lower() in PREFIXES:
        kind = head.lower()
        name, after = _take_name(rest, kind, comp)
        if kind == "silence":
            if not rest.startswith(_QUOTE):
                name = rest
            if after or (not rest.startswith(_QUOTE) and "@" in name):
                raise _fail(f"unexpected characters in silenced entity {rest!r}", "silence:ENTITY",
                            f'Quote names containing \'@\' or \'+\': silence:"{name}".')
            return Perturbation("silence", _check_name(name, "entity name"))
        strength_text: str | None = None
        if rest.startswith(_QUOTE):
            if after:
                if kind != "kd" or not after.startswith(":"):
                    raise _fail(f"unexpected text {after!r} after the quoted name in {comp!r}",
                                f"{kind}:\"GENE\"" + ("[:STRENGTH]" if kind == "kd" else ""), "Remove it.")
                strength_text = after[1:]
        else:
            name, sep, tail = rest.partition(":")
            if sep:
                strength_text = tail
        if "@" in name and not rest.startswith(_QUOTE):
            raise _fail(f"'@' in the gene name of {comp!r}", "a gene symbol (doses are only for compounds)",
                        f"For a compound drop the prefix: {rest}.")
        _check_name(name, "gene name")
        if any(c.isspace() for c in name) and not rest.startswith(_QUOTE):
            raise _fail(f"whitespace inside gene name {name!r} in {comp!r}", "a gene symbol without spaces",
                        "Fix the label (for a compound write NAME@DOSE).")
        if strength_text is not None:
            if kind != "kd":
                fix = (f"For a partial loss of function write kd:{name}:{strength_text}; otherwise write ko:{name}."
                       if kind == "ko" else f"Write {kind}:{name}.")
                raise _fail(f"a strength after {kind}:{name} in {comp!r}", "a strength only on knockdowns", fix)
            if ":" in strength_text:
                raise _fail(f"too many ':' in {comp!r}", "kd:GENE or kd:GENE:STRENGTH", "Remove the extra ':'.")
            return Perturbation("kd", name, strength=_parse_strength(strength_text, comp, name))
        return Perturbation(kind, name)  # type: ignore[arg-type]
    if "@" in comp:
        name, _, dose_text = comp.rpartition("@")
        if not name:
            raise _fail(f"a dose without a compound name in {comp!r}", "NAME@DOSE", "Put the compound name before '@'.")
        if ":" in name:
            raise _fail(f"':' in compound name {name!r}", "NAME@DOSE with NAME free of ':'",
                        f'Quote the name: "{name}"@{dose_text}.')
        if "@" in name:
            raise _fail(f"more than one '@' in {comp!r}", "NAME@DOSE", f'Quote the name: "{name}"@{dose_text}.')
        return Perturbation("compound", _check_name(name, "compound name"), dose=_parse_dose(dose_text, comp, name))
    if colon:
        raise _unknown_prefix(head, comp)
    if any(c.isspace() for c in comp):
        raise _fail(f"whitespace inside gene name {comp!r}", "a gene symbol without spaces",
                    "Fix the label (for a compound give a dose: NAME@DOSE).")
    return Perturbation("ko", _check_name(comp, "gene name"))


@functools.lru_cache(maxsize=65536)
def _parse_cached(label: str, control_labels: tuple[str, ...]) -> Action:
    if label == "":
        raise _fail("an empty perturbation label", _GRAMMAR_HINT,
                    "Fill empty labels (e.g. with 'control' for unperturbed cells).")
    if not label.strip():
        raise _fail(f"a whitespace-only perturbation label {label!r}", _GRAMMAR_HINT,
                    "Fill empty labels (e.g. with 'control' for unperturbed cells).")
    if label != label.strip():
        raise _fail(f"leading/trailing whitespace in label {label!r}", "labels without surrounding whitespace",
                    f"Strip the labels (e.g. adata.obs[key] = adata.obs[key].str.strip()): {label.strip()!r}.")
    if label in control_labels:
        return CONTROL
    parts = _split_components(label)
    components: list[Perturbation] = []
    n_gears_ctrl = 0
    for part in parts:
        if part == GEARS_CTRL and len(parts) > 1:
            n_gears_ctrl += 1
            continue
        if part in control_labels or (part and _looks_like_control(part, control_labels)):
            if len(parts) > 1:
                raise _fail(
                    f"the control label {part!r} inside the combination {label!r}",
                    "either a control label alone or only perturbation components",
                    f"Drop it: {'+'.join(p for p in parts if p != part)!r}.",
                )
            raise _fail(
                f"{part!r}, which differs from the control label(s) {list(control_labels)} only by case",
                "the exact control label, or ko:GENE for a gene with that symbol",
                f"Write the control label exactly, pass control_labels=({part!r},), or ko:{part} for the gene.",
            )
        components.append(_parse_component(part, label))
    if n_gears_ctrl > 1 or (n_gears_ctrl and not components):
        raise _fail(f"{GEARS_CTRL!r} more than once in {label!r}", f"at most one {GEARS_CTRL!r} (GEARS 'A+ctrl' = A)",
                    f"Write {'+'.join(p for p in parts if p != GEARS_CTRL) or 'ctrl'!r}.")
    try:
        return Action(tuple(components))
    except PerturbationParseError as err:
        raise PerturbationParseError(f"in label {label!r}: {err}") from None


def _normalise_control_labels(control_labels: Iterable[str]) -> tuple[str, ...]:
    out = tuple(control_labels)
    for c in out:
        if not isinstance(c, str) or not c or c != c.strip():
            raise _fail(f"control label {c!r}", "non-empty strings without surrounding whitespace",
                        "Pass e.g. control_labels=('control',).")
    return out


def parse_action(label: str | Action, *, control_labels: Iterable[str] = DEFAULT_CONTROL_LABELS) -> Action:
    """Parse one perturbation label into an `Action` (see the module docstring for the grammar).

    Parameters
    ----------
    label
        E.g. ``"STAT1"``, ``"IFNGR1+STAT1"``, ``"kd:JAK2:0.5"``, ``"vemurafenib@3.33"``,
        ``"silence:HALLMARK_INTERFERON_GAMMA_RESPONSE"``, ``"control"``. An `Action` is returned as is.
    control_labels
        Labels meaning "no perturbation" (exact, case-sensitive match).

    Returns
    -------
    The parsed, frozen `Action` (results are cached per label).

    Raises
    ------
    PerturbationParseError
        With what was found, what was expected and how to fix it.
    """
    if isinstance(label, Action):
        return label
    if not isinstance(label, str):
        raise _fail(
            f"a perturbation label {label!r} of type {type(label).__name__}", "a string",
            "Convert the label column to strings and fill missing values "
            "(e.g. adata.obs[key].astype(str)); unperturbed cells should be 'control'.",
        )
    return _parse_cached(label, _normalise_control_labels(control_labels))


def parse_actions(
    labels: Iterable[str | Action], *, control_labels: Iterable[str] = DEFAULT_CONTROL_LABELS
) -> list[Action]:
    """Parse many labels (each distinct label once); errors for all bad labels are reported together."""
    controls = _normalise_control_labels(control_labels)
    labels = list(labels)
    parsed: dict[object, Action] = {}
    errors: dict[str, str] = {}
    for label in labels:
        key = label if isinstance(label, (str, Action)) else repr(label)
        if key in parsed or key in errors:
            continue
        try:
            parsed[key] = parse_action(label, control_labels=controls)  # type: ignore[arg-type]
        except PerturbationParseError as err:
            errors[key] = str(err)  # type: ignore[index]
    if errors:
        shown = "; ".join(f"[{k!r}] {v}" for k, v in list(errors.items())[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise PerturbationParseError(f"{len(errors)} perturbation label(s) do not parse{more}: {shown}")
    return [parsed[label if isinstance(label, (str, Action)) else repr(label)] for label in labels]
