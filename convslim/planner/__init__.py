"""Planning: which form and setting each conv gets.

- ``uniform``: one form everywhere at the user's options (``make_plan``), and the per-conv decision every policy
  builds (``decide``).
- ``budgeted``: per conv, the form and setting that meet one budget with the least damage (``plan_to_budget``),
  from ``candidates`` (the grid), ``latency`` (ORT timings, cached), ``damage`` (output error), ``budget`` (the
  knapsack), ``compose`` (per-layer savings scaled to the model), ``closed_loop`` (whole-model rounds) and
  ``verdict`` (nothing measured faster: keep the model).

Example:
    >>> from convslim.planner import plan_to_budget
    >>> plan = plan_to_budget(prepared, to="auto", target_speedup=2.0)
"""

from convslim.planner.budgeted import plan_to_budget
from convslim.planner.candidates import parse_forms
from convslim.planner.latency import LatencyCache
from convslim.planner.request import PlanRequest, check_budget, check_plan_threads
from convslim.planner.uniform import decide, make_plan, site_skip_reason

__all__ = [
    "LatencyCache",
    "PlanRequest",
    "check_budget",
    "check_plan_threads",
    "decide",
    "make_plan",
    "parse_forms",
    "plan_to_budget",
    "site_skip_reason",
]
