"""The contract every form implements, and the per-conv facts ("sites") forms decide on.

A form is mechanism only: given a trained conv and a concrete *setting* (e.g. ``{"rank": 2}``) it says
whether it can take the conv (``supports``), what it would cost (``cost``), and builds the replacement
(``convert``, a pure function that never touches the input conv). Which setting a layer gets is policy:
``settings_from_options`` turns user options (``--rank``, ``--energy`` ...) into a setting per conv, and the
planner may pick others.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from convslim.core.plan import LayerDecision
from convslim.core.sites import ConvSite, Cost, dense_cost, no_saving_reason
from convslim.errors import PlanError, UsageError


def plain_conv2d_reason(conv: nn.Module) -> str | None:
    """Why ``conv`` is not a plain, trainable 2-D convolution a form can take, or None."""
    if isinstance(conv, nn.ConvTranspose2d):
        return "transposed convolution: not rewritten"
    if not isinstance(conv, nn.Conv2d):
        return f"{type(conv).__name__} is not a 2-D convolution"
    if conv.weight.dim() != 4:
        return "weight is not 4-D"
    return None


@dataclass(frozen=True)
class Option:
    """One user option of a form: ``name=`` in the API, ``--name-with-dashes`` on the command line (the CLI builds
    its "form settings" group from every registered form's options, so a new form needs no CLI edit).

    ``default`` is what the form uses when the option is not given (shown in ``--help``, recorded in the report);
    ``check(value)`` returns None or what is wrong with the value (e.g. "a whole number ≥ 1"); ``type`` bool makes
    a ``--name`` / ``--no-name`` switch. A value of 0 is never "absent": it is checked like any other.

    Example:
        >>> Option("rank", float, "rank T", default=1, check=whole_at_least(1))
    """

    name: str
    type: type
    help: str
    default: Any = None
    choices: tuple = ()
    check: Callable[[Any], str | None] | None = None
    required: bool = False  # a per-conv setting (``Form.setting_options``) must hold it

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def problem(self, value: Any) -> str | None:
        """None when ``value`` is acceptable, else what it must be."""
        if value is None:
            return None
        if self.type is bool:
            return None if isinstance(value, bool) else "true or false"
        if self.type in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return "a number"
        if self.type is float and value != value:
            return "a number (not NaN)"
        if self.type in (str, list) and not isinstance(value, self.type):
            return "a string" if self.type is str else "a list"
        if self.choices and value not in self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        return self.check(value) if self.check else None


def whole_at_least(low: int) -> Callable[[Any], str | None]:
    return lambda v: None if float(v).is_integer() and v >= low else f"a whole number ≥ {low}"


def whole_or_fraction(v: Any) -> str | None:
    ok = 0 < v < 1 or (v >= 1 and float(v).is_integer())
    return None if ok else "a whole number ≥ 1 or a fraction in (0, 1)"


def in_interval(low: float, high: float, closed_low: bool, closed_high: bool) -> Callable[[Any], str | None]:
    lo_ok = (lambda v: v >= low) if closed_low else (lambda v: v > low)
    hi_ok = (lambda v: v <= high) if closed_high else (lambda v: v < high)
    shown = f"{'[' if closed_low else '('}{low}, {high}{']' if closed_high else ')'}"
    return lambda v: None if lo_ok(v) and hi_ok(v) else f"in {shown}"


def numbers_at_least(low: float, whole: bool = False) -> Callable[[Any], str | None]:
    """For list settings: every item a number ≥ ``low`` (``whole``: a whole number)."""

    def check(values: Any) -> str | None:
        ok = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= low
            for v in values
        )
        ok = ok and (not whole or all(float(v).is_integer() for v in values))
        kind = "whole numbers" if whole else "numbers"
        return None if ok else f"a list of {kind} ≥ {low:g}"

    return check


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest rank T whose kept energy Σ_rows Σ_{t<T} σ_t² is at least ``energy`` of the total Σ σ² (rows:
    one spectrum per channel or group, each sorted descending; every row keeps the same T). 1 for no values."""
    per_rank = (singular_values**2).sum(dim=0)
    if not per_rank.numel():
        return 1
    kept = per_rank.cumsum(0) / per_rank.sum().clamp_min(1e-30)
    return int((kept < energy - 1e-12).sum().item()) + 1


class Form:
    """Base class of a conversion form. Subclasses set ``name`` and ``options`` and implement the four
    methods."""

    name: str = ""
    options: tuple[Option, ...] = ()
    # what a per-conv setting (plan.json's "setting") holds where it differs from ``options`` (a concrete rank
    # rather than a fraction, values graph passes fixed): a plan file is untrusted, ``checked_setting`` checks
    # every key against these and ``options``
    setting_options: tuple[Option, ...] = ()
    # the graph pass (by name, in ``convslim.passes.form_passes``) that runs after this form's convs are swapped
    # in, before ``finalize``; None: none. A form names its pass rather than importing it, so forms never
    # depend on passes.
    graph_pass: str | None = None

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Every option in force: the given ones checked (unknown names refused), the rest at their defaults."""
        known = {o.name: o for o in self.options}
        for key, value in options.items():
            option = known.get(key)
            if option is None:
                flags = ", ".join(o.flag for o in self.options) or "none"
                flag = "--" + key.replace("_", "-")
                raise UsageError(f"{flag} does not apply to form {self.name} (its options: {flags})")
            problem = option.problem(value)
            if problem:
                raise UsageError(f"{option.flag} for {self.name} must be {problem}, got {value!r}")
        return {o.name: o.default if options.get(o.name) is None else options[o.name] for o in self.options}

    def settings_from_options(self, site: ConvSite, options: dict[str, Any]) -> dict[str, Any]:
        """Turn user options into this conv's concrete setting (policy; the planner may override it)."""
        raise NotImplementedError

    def checked_setting(self, site: ConvSite, setting: Any, where: str) -> dict[str, Any]:
        """``setting`` read from a plan file (untrusted), checked for ``site`` with this form's own option checks
        (``setting_options`` first, then ``options``): unknown keys, a required key missing, values of the wrong
        type or outside their check, then ``setting_problem``, each a ``PlanError`` starting with ``where``.
        Returns the setting with whole numbers of int options as ints."""
        if not isinstance(setting, dict):
            raise PlanError(f"{where}: the setting must be a JSON object, got {type(setting).__name__}")
        known = {o.name: o for o in self.options} | {o.name: o for o in self.setting_options}
        unknown = sorted(set(setting) - set(known))
        if unknown:
            raise PlanError(f"{where}: {self.name} settings have no {', '.join(map(repr, unknown))}")
        missing = [o.name for o in self.setting_options if o.required and o.name not in setting]
        if missing:
            raise PlanError(f"{where}: the {self.name} setting needs {', '.join(missing)}")
        for key, value in setting.items():
            problem = known[key].problem(value)
            if problem:
                raise PlanError(f"{where}: {self.name} setting {key} must be {problem}, got {value!r}")
        clean = {
            k: int(v) if known[k].type is int and isinstance(v, float) else v for k, v in setting.items()
        }
        problem = self.setting_problem(site, clean)
        if problem:
            raise PlanError(f"{where}: {problem}")
        return clean

    def as_built(self, site: ConvSite, setting: dict[str, Any]) -> dict[str, Any]:
        """``setting`` as ``convert`` builds it for this conv (e.g. a rank above the conv's maximum is built at the
        maximum), so that a plan records, and the report costs, what was built. Default: as given."""
        return setting

    def setting_problem(self, site: ConvSite, setting: dict[str, Any]) -> str | None:
        """What is wrong with a (type-checked) setting for this particular conv, e.g. channel indices out of
        range, or None. Forms whose settings name channels override it."""
        return None

    def supports(self, site: ConvSite, setting: dict[str, Any]) -> str | None:
        """None when the form can and should take ``site`` at ``setting``, else the reason it skips it."""
        raise NotImplementedError

    def cost(self, site: ConvSite, setting: dict[str, Any]) -> Cost:
        raise NotImplementedError

    def convert(self, conv: nn.Conv2d, setting: dict[str, Any]) -> nn.Module:
        """Pure: build the replacement module from the trained ``conv``; ``conv`` is left untouched."""
        raise NotImplementedError

    def no_saving_reason(self, site: ConvSite, setting: dict[str, Any], at: str) -> str | None:
        """The skip reason when the rewritten conv would not cost fewer MACs than the dense one (``at`` names
        the setting, e.g. "rank 3"), else None."""
        return no_saving_reason(dense_cost(site), self.cost(site, setting), at)

    def weight_error(self, conv: nn.Conv2d, setting: dict[str, Any]) -> float | None:
        """‖W − W_approx‖ / ‖W‖ of the replacement's effective kernel, when the form defines one."""
        return None

    def finalize(
        self, module: nn.Module, decisions: list[LayerDecision], notes: list[str]
    ) -> tuple[nn.Module, list[LayerDecision]]:
        """Work after this form's convs were swapped in and its ``graph_pass`` ran (e.g. a note on layers ORT
        may run slowly). Gets the whole (copied) model, which it may change, and this form's decisions as the
        graph pass built them, which it must not change: it returns the model and the decisions as built (new
        objects where it fixed more of a setting). Appends report notes."""
        return module, decisions


__all__ = [
    "ConvSite",
    "Cost",
    "Form",
    "dense_cost",
    "numbers_at_least",
    "plain_conv2d_reason",
    "rank_for_energy",
]
