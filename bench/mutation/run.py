"""Mutation testing of the modules that guard README promises: which one-line breakages do the tests miss?

Run: ``.venv/bin/python bench/mutation/run.py [--rev REV] [--modules http,routing,...] [--promises-only]``
(CPU-heavy: tens of minutes per module on a shared 2-core machine; run it under ``nice``). Not part of
``./dev test``.

- The mutants come from cosmic-ray (pinned with every dependency in ``bench/mutation/requirements.txt``,
  installed into its own environment, ``.cache/mutation/venv``), narrowed by ``select_mutants.py`` (one
  replacement per operator site, nothing in annotations or log calls; its docstring says why).
- Each module is mutated in a scratch copy of the tree (``.cache/mutation/tree-LABEL``: the working tree,
  or ``git archive REV`` with ``--rev``), never in the checkout, and each mutant runs only the tests that
  guard that module (``MODULES``), with ``-x``, under the project's ``.venv`` with ``PYTHONPATH`` on the
  copy, so subprocesses the tests start (``python -m wattgate ...``) run the mutant too.
- The promise mutants (``promises.py``) are the breakages issue 21 found by hand, applied as text edits
  to the same copy: each must make a named test fail.

Prints a table per module (mutants, killed, survived, timeouts) and the promise mutants, writes every
survivor with its diff to ``.cache/mutation/LABEL/survivors.txt``, and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CACHE = ROOT / ".cache" / "mutation"
VENV = CACHE / "venv"
REQUIREMENTS = HERE / "requirements.txt"
PYTEST = (str(ROOT / ".venv" / "bin" / "python"), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider")

# module -> the tests that guard it, fastest and most pointed first (``-x`` stops at the first failure);
# files missing from the tree under test (an older --rev) are left out
MODULES: dict[str, tuple[str, ...]] = {
    "wattgate/gateway/http.py": (
        "tests/gateway/test_headers.py",
        "tests/gateway/test_errors.py",
        "tests/gateway/test_openai_client.py",
    ),
    "wattgate/gateway/routing.py": (
        "tests/gateway/test_routing.py",
        "tests/gateway/test_plan_routing.py",
        "tests/gateway/test_failures.py",
    ),
    "wattgate/gateway/proxy.py": (
        "tests/gateway/test_headers.py",
        "tests/gateway/test_errors.py",
        "tests/gateway/test_timeouts.py",
        "tests/gateway/test_failures.py",
        "tests/gateway/test_openai_client.py",
        "tests/gateway/test_broken_upstream.py",
        "tests/gateway/test_redis.py::test_load_windows_and_observations_are_recorded",
    ),
    "wattgate/gateway/upstream.py": (  # split out of proxy.py by the front-door work (after the runs of the README)
        "tests/gateway/test_failures.py",
        "tests/gateway/test_errors.py",
        "tests/gateway/test_timeouts.py",
        "tests/gateway/test_headers.py",
    ),
    "wattgate/gateway/store.py": (
        "tests/gateway/test_store.py",
        "tests/gateway/test_redis.py",
        "tests/gateway/test_plan_routing.py",
    ),
    "wattgate/agent/clocks.py": (
        "tests/agent/test_clocks.py",
        "tests/agent/test_agent_loop.py",
        "tests/agent/test_engines.py",
    ),
    "wattgate/agent/engines/process.py": (
        "tests/agent/test_drain.py",
        "tests/agent/test_engines.py",
        "tests/agent/test_agent_loop.py::test_until_a_plan_is_seen_nothing_is_started_or_stopped",  # adoption
    ),
    "wattgate/agent/actuator.py": (
        "tests/agent/test_drain.py",
        "tests/agent/test_engines.py",
        "tests/agent/test_agent_loop.py",
    ),
    "wattgate/planner/solver.py": (
        "tests/planner/test_solver.py",
        "tests/planner/test_warm_start.py",
    ),
}


@dataclass
class ModuleResult:
    module: str
    mutants: int
    killed: int
    timeouts: int
    survived: list[str]
    incompetent: int
    wall_s: float


def ensure_venv() -> Path:
    """cosmic-ray in its own environment (kept out of wattgate's): created once per requirements file."""
    stamp = CACHE / "venv.installed"
    python = VENV / "bin" / "python"
    if python.exists() and stamp.exists() and stamp.read_bytes() == REQUIREMENTS.read_bytes():
        return VENV / "bin"
    shutil.rmtree(VENV, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(REQUIREMENTS)], check=True
    )
    stamp.write_bytes(REQUIREMENTS.read_bytes())
    return VENV / "bin"


def scratch_tree(rev: str | None, label: str) -> Path:
    """A copy of the tree to mutate: ``git archive REV``, or the working tree's tracked and untracked files."""
    dest = CACHE / f"tree-{label}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if rev:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
        tar_path = CACHE / f"{label}.tar"
        tar_path.write_bytes(archive)
        with tarfile.open(tar_path) as tar:
            tar.extractall(dest, filter="data")
        tar_path.unlink()
    else:
        files = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True, capture_output=True
        ).stdout.split(b"\0")
        for name in filter(None, files):
            src = ROOT / name.decode()
            if src.is_file():
                (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name.decode())
    return dest


def test_env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}


def selection(tree: Path, module: str) -> list[str]:
    return [t for t in MODULES[module] if (tree / t.split("::")[0]).exists()]


def run_tests(tree: Path, tests: list[str], timeout_s: float) -> tuple[bool, str, float]:
    """(passed, output, seconds) of the tests on the tree as it is now."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*PYTEST, *tests],
        cwd=tree,
        env=test_env(tree),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a timeout ends the servers and agents the tests started too
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return False, "timeout", time.monotonic() - t0
    return proc.returncode == 0, output, time.monotonic() - t0


def mutate_module(bin_dir: Path, tree: Path, out: Path, module: str, sample: int) -> ModuleResult:
    name = module.replace("/", ".").removesuffix(".py")
    tests = selection(tree, module)
    ok, output, base_s = run_tests(tree, tests, 900)
    if not ok:
        raise SystemExit(f"{module}: the selected tests fail on the unmutated tree:\n{output[-3000:]}")
    timeout_s = round(3 * base_s + 30)
    config = out / f"{name}.toml"
    db = out / f"{name}.sqlite"
    db.unlink(missing_ok=True)
    command = " ".join([*PYTEST, *tests])
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{tree / module}"\n'
        f"timeout = {timeout_s}\n"
        "excluded-modules = []\n"
        f'test-command = "{command}"\n'
        '[cosmic-ray.distributor]\nname = "local"\n'
    )
    env = test_env(tree)
    subprocess.run([str(bin_dir / "cosmic-ray"), "init", str(config), str(db)], cwd=tree, env=env, check=True)
    subprocess.run(
        [str(bin_dir / "python"), str(HERE / "select_mutants.py"), str(db), str(tree / module), str(sample)],
        cwd=tree,
        check=True,
    )
    t0 = time.monotonic()
    subprocess.run([str(bin_dir / "cosmic-ray"), "exec", str(config), str(db)], cwd=tree, env=env, check=True)
    wall_s = time.monotonic() - t0
    return collect(bin_dir, out, tree, module, sample, wall_s)


def collect(bin_dir: Path, out: Path, tree: Path, module: str, sample: int, wall_s: float = 0.0) -> ModuleResult:
    """The results of ``module``'s session, over the 1-in-``sample`` mutants in scope (a session run with a
    divisor of ``sample`` holds them all: every 12th in-scope mutant is also every 6th's every other)."""
    db = out / f"{module.replace('/', '.').removesuffix('.py')}.sqlite"
    dump = subprocess.run(
        [str(bin_dir / "cosmic-ray"), "dump", str(db)], cwd=tree, check=True, capture_output=True, text=True
    ).stdout
    in_scope = []
    for line in dump.splitlines():
        item, result = json.loads(line)
        why = (result or {}).get("output") or ""
        if result is not None and result["worker_outcome"] == "skipped" and "sample" not in why:
            continue  # out of scope (select_mutants.py), not merely left out of a sample
        m = item["mutations"][0]
        in_scope.append((tuple(m["start_pos"]), m["operator_name"], m, result))
    in_scope.sort(key=lambda x: (x[0], x[1]))
    killed = timeouts = incompetent = mutants = 0
    survived: list[str] = []
    source = (tree / module).read_text(encoding="utf-8").splitlines()
    for n, (_, _, m, result) in enumerate(in_scope):
        if n % sample:
            continue
        if result is None or result["worker_outcome"] == "skipped":
            raise SystemExit(f"{module}: mutant {n} of the 1-in-{sample} sample was not run")
        mutants += 1
        outcome = result.get("test_outcome")
        if outcome == "survived":
            at = m["start_pos"][0]
            op = m["operator_name"].removeprefix("core/")
            survived.append(f"{module}:{at} {op}: {source[at - 1].strip()}\n{result.get('diff') or ''}")
        elif outcome == "incompetent":
            incompetent += 1
        else:
            killed += 1
            timeouts += (result.get("output") or "") == "timeout"
    return ModuleResult(module, mutants, killed, timeouts, survived, incompetent, wall_s)


def run_promises(tree: Path) -> list[tuple[str, str, str]]:
    """(promise, verdict, first failing test) for each hand-written breakage of ``promises.py``."""
    sys.path.insert(0, str(HERE))
    from promises import PROMISES  # noqa: PLC0415  (beside this script)

    rows = []
    for p in PROMISES:
        path = tree / p.module
        original = path.read_text(encoding="utf-8")
        if original.count(p.old) != 1:
            rows.append((p.name, "not applicable (text not found once)", ""))
            continue
        tests = [t for t in p.tests if (tree / t.split("::")[0]).exists()]
        if not tests:
            rows.append((p.name, "SURVIVED (no test file)", ""))
            continue
        path.write_text(original.replace(p.old, p.new), encoding="utf-8")
        try:
            ok, output, _ = run_tests(tree, tests, 900)
        finally:
            path.write_text(original, encoding="utf-8")
        failed = re.search(r"^FAILED (\S+)", output, re.MULTILINE) or re.search(r"^ERROR (\S+)", output, re.MULTILINE)
        rows.append((p.name, "SURVIVED" if ok else "killed", failed.group(1) if failed else ("timeout" * (not ok))))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", help="mutate git revision REV (its code and its tests) instead of the working tree")
    ap.add_argument("--label", help="name of the scratch tree and results (default: the revision, or 'worktree')")
    ap.add_argument("--modules", default="", help="comma-separated module stems, e.g. http,clocks (default: all)")
    ap.add_argument("--sample", type=int, default=1, help="run every N-th mutant in scope, in source order [1: all]")
    ap.add_argument("--promises-only", action="store_true", help="only the hand-written promise mutants")
    ap.add_argument("--no-promises", action="store_true", help="skip the hand-written promise mutants")
    ap.add_argument(
        "--summarize", action="store_true", help="no new run: the table of LABEL's sessions (with --sample)"
    )
    args = ap.parse_args()
    label = args.label or (args.rev or "worktree").replace("/", "_")
    wanted = {m.strip() for m in args.modules.split(",") if m.strip()}
    modules = [m for m in MODULES if not wanted or Path(m).stem in wanted]
    out = CACHE / label
    out.mkdir(parents=True, exist_ok=True)
    results: list[ModuleResult] = []
    if args.summarize:
        tree = CACHE / f"tree-{label}"
        done = [m for m in modules if (out / f"{m.replace('/', '.').removesuffix('.py')}.sqlite").exists()]
        results = [collect(ensure_venv(), out, tree, m, args.sample) for m in done]
        args.no_promises = True
    else:
        tree = scratch_tree(args.rev, label)
    if not args.promises_only and not args.summarize:
        bin_dir = ensure_venv()
        for module in modules:
            res = mutate_module(bin_dir, tree, out, module, args.sample)
            results.append(res)
            print(f"{module}: {res.mutants} mutants, {len(res.survived)} survived ({res.wall_s:.0f} s)", flush=True)
    promises = [] if args.no_promises else run_promises(tree)
    (out / "survivors.txt").write_text("\n".join(s for r in results for s in r.survived), encoding="utf-8")
    sample = f", every {args.sample}th mutant in scope" if args.sample > 1 else ""
    print(f"\nmutation testing of {label} (cosmic-ray 8.7.0{sample}; measured on this machine)\n")
    print(f"| {'module':<34} | mutants | killed | of which timeouts | survived | incompetent | wall s |")
    print(f"|{'-' * 36}|---------|--------|-------------------|----------|-------------|--------|")
    for r in results:
        print(
            f"| {r.module:<34} | {r.mutants:>7} | {r.killed:>6} | {r.timeouts:>17} | {len(r.survived):>8} "
            f"| {r.incompetent:>11} | {r.wall_s:>6.0f} |"
        )
    total = sum(r.mutants for r in results)
    survived = sum(len(r.survived) for r in results)
    if results:
        print(f"| {'total':<34} | {total:>7} | {total - survived:>6} | {'':>17} | {survived:>8} | {'':>11} | {'':>6} |")
        print(f"\nsurvivors with their diffs: {out / 'survivors.txt'}")
    if promises:
        print("\n| promise mutant | verdict | first failing test |\n|---|---|---|")
        for name, verdict, test in promises:
            print(f"| {name} | {verdict} | {test} |")
    summary = {
        "bench": "mutation",
        "label": label,
        "rev": args.rev,
        "sample": args.sample,
        "modules": {r.module: {"mutants": r.mutants, "survived": len(r.survived), "killed": r.killed} for r in results},
        "mutants": total,
        "survived": survived,
        "promises": {name: verdict for name, verdict, _ in promises},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
