"""Mark the mutants of one cosmic-ray session that are out of scope as skipped (runs in cosmic-ray's venv).

Usage: ``select_mutants.py SESSION.sqlite MODULE.py``. The scope, and why:
- one replacement per operator site (``+`` becomes ``-``, not each of the eleven other binary operators;
  ``<`` becomes ``<=`` and ``>=``: its boundary and its negation), one number change (+1) per literal;
- nothing inside a type annotation (``str | None`` with ``from __future__ import annotations`` is never
  evaluated: every such mutant is equivalent) or inside the arguments of a logging call (log text is
  not a promise).
Everything else cosmic-ray's core operators make is kept.
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
    spans = excluded_spans(module.read_text(encoding="utf-8"))
    kept = skipped = 0
    with use_db(db_path, WorkDB.Mode.open) as db:
        seen_numbers: set[tuple[int, int]] = set()
        for item in sorted(db.pending_work_items, key=lambda i: i.mutations[0].occurrence):
            m = item.mutations[0]
            op = m.operator_name
            pos = tuple(m.start_pos)
            why = ""
            if not KEEP.match(op):
                why = "operator out of scope"
            elif inside(pos, spans):  # type: ignore[arg-type]
                why = "inside an annotation or a logging call"
            elif op.endswith("NumberReplacer"):
                if pos in seen_numbers:
                    why = "one number change per literal"
                seen_numbers.add(pos)  # type: ignore[arg-type]
            if why:
                db.set_result(item.job_id, WorkResult(output=why, worker_outcome=WorkerOutcome.SKIPPED))
                skipped += 1
            else:
                kept += 1
    print(f"{module}: {kept} mutants in scope, {skipped} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
