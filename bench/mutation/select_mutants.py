"""Mark the mutants of one cosmic-ray session that are out of scope as skipped (runs in cosmic-ray's venv).

Usage: ``select_mutants.py SESSION.sqlite MODULE.py [N]``. The scope, and why:
- one replacement per operator site (``+`` becomes ``-``, not each of the eleven other binary operators;
  ``<`` becomes ``<=`` and ``>=``: its boundary and its negation), one number change (+1) per literal;
- nothing inside a type annotation (``str | None`` with ``from __future__ import annotations`` is never
  evaluated: every such mutant is equivalent) or inside the arguments of a logging call (log text is
  not a promise).
Everything else cosmic-ray's core operators make is kept; with N, only every N-th of those in source order
(line, column, operator): a fixed sample, the same rule on every run, for machines where a full run takes
too long.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult

KEEP = re.compile(
    r"core/("
    r"ReplaceBinaryOperator_(Add_Sub|Sub_Add|Mul_Div|Div_Mul|FloorDiv_Div|Mod_FloorDiv|Pow_Mul|BitOr_BitAnd"
    r"|BitAnd_BitOr|BitXor_BitOr|LShift_RShift|RShift_LShift)"
    r"|ReplaceComparisonOperator_(Eq_NotEq|NotEq_Eq|Lt_LtE|Lt_GtE|LtE_Lt|LtE_Gt|Gt_GtE|Gt_LtE|GtE_Gt|GtE_Lt"
    r"|Is_IsNot|IsNot_Is)"
    r"|ReplaceUnaryOperator_(USub_UAdd|Delete_Not)"
    r"|AddNot|ReplaceTrueWithFalse|ReplaceFalseWithTrue|ReplaceAndWithOr|ReplaceOrWithAnd|ReplaceBreakWithContinue"
    r"|ReplaceContinueWithBreak|ExceptionReplacer|ZeroIterationForLoop|RemoveDecorator|NumberReplacer"
    r")$"
)

Span = tuple[tuple[int, int], tuple[int, int]]


def excluded_spans(source: str) -> list[Span]:
    """Annotations and logging-call arguments, as ((line, col), (end_line, end_col))."""
    spans: list[Span] = []

    def add(node: ast.AST | None) -> None:
        if node is not None:
            spans.append(((node.lineno, node.col_offset), (node.end_lineno or 0, node.end_col_offset or 0)))  # type: ignore[attr-defined]

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is not None:
                    add(arg.annotation)
            add(node.returns)
        elif isinstance(node, ast.AnnAssign):
            add(node.annotation)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in {"log", "logging", "logger"}
        ):
            for arg in node.args:
                add(arg)
    return spans


def inside(pos: tuple[int, int], spans: list[Span]) -> bool:
    return any(start <= pos < end for start, end in spans)


def main() -> int:
    db_path, module = sys.argv[1], Path(sys.argv[2])
    every = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    spans = excluded_spans(module.read_text(encoding="utf-8"))
    skip: dict[str, str] = {}
    with use_db(db_path, WorkDB.Mode.open) as db:
        items = sorted(db.pending_work_items, key=lambda i: i.mutations[0].occurrence)
        seen_numbers: set[tuple[int, int]] = set()
        in_scope = []
        for item in items:
            m = item.mutations[0]
            op = m.operator_name
            pos = tuple(m.start_pos)
            if not KEEP.match(op):
                skip[item.job_id] = "operator out of scope"
            elif inside(pos, spans):  # type: ignore[arg-type]
                skip[item.job_id] = "inside an annotation or a logging call"
            elif op.endswith("NumberReplacer") and pos in seen_numbers:
                skip[item.job_id] = "one number change per literal"
            else:
                seen_numbers.add(pos)  # type: ignore[arg-type]
                in_scope.append(item)
        in_scope.sort(key=lambda i: (tuple(i.mutations[0].start_pos), i.mutations[0].operator_name))
        for n, item in enumerate(in_scope):
            if n % every:
                skip[item.job_id] = f"not in the 1-in-{every} sample"
        for job_id, why in skip.items():
            db.set_result(job_id, WorkResult(output=why, worker_outcome=WorkerOutcome.SKIPPED))
    kept = len(items) - len(skip)
    print(f"{module}: {kept} mutants to run ({len(in_scope)} in scope, 1 in {every}), {len(skip)} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
