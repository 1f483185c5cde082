"""`compare`'s method entries: a method, a baseline or an alias, optionally with its own settings.

An entry is `LABEL[:KEY=VALUE[:KEY=VALUE...]]`. LABEL names the report row and the cell directory;
it is a registered method (`lora`), a baseline (`majority`) or an alias below (`bidora_fo`). The
`KEY=VALUE` overrides apply to that entry's cells only, after the settings shared by every cell:
`full:optim.lr=1e-5` trains full fine-tuning at 1e-5 instead of its default (config.METHOD_DEFAULTS).
"""

from __future__ import annotations

from dataclasses import dataclass

# alias -> (method, its overrides): variants that deserve their own row in a comparison
ALIASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "bidora_fo": ("bidora", ("bilevel.hypergradient=first_order",)),  # BiDoRA's first-order ablation
}


@dataclass(frozen=True)
class MethodSpec:
    label: str  # the row's name in comparison.csv / .md and the cell directory's
    method: str  # the registered method or baseline that trains
    overrides: tuple[str, ...] = ()  # this entry's own KEY=VALUE settings (alias ones first)


def parse_method(entry: str) -> MethodSpec:
    """`full:optim.lr=1e-5` → MethodSpec("full", "full", ("optim.lr=1e-5",)); aliases expanded."""
    label, *overrides = [part.strip() for part in entry.split(":")]
    bad = [o for o in overrides if "=" not in o]
    if not label or bad:
        raise ValueError(f"method entry '{entry}': use METHOD or METHOD:KEY=VALUE[:KEY=VALUE], "
                         "e.g. full:optim.lr=1e-5")
    method, alias_overrides = ALIASES.get(label, (label, ()))
    return MethodSpec(label, method, (*alias_overrides, *overrides))


def parse_methods(entries: list[str]) -> list[MethodSpec]:
    """Every entry parsed; two entries with one label would share cells, so that is an error."""
    specs = [parse_method(entry) for entry in entries]
    labels = [spec.label for spec in specs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"method(s) {', '.join(repeated)} listed twice; give each entry its own label "
                         f"(aliases: {', '.join(ALIASES)})")
    return specs
