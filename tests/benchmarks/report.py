"""The benchmark report: results.json, report.md and PNG charts, from the measured numbers only."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from benchmarks.measure import JSON
from benchmarks.single import COMMON_STEPS
from localcluster.cluster import LocalCluster

OWN_SHARE_TARGET = 0.25
RATIO_TARGET = 0.5
SCALE_RATIO_TARGET = 2.0
SCALE_TARGET_GROUPS = 50
MIB = 1024 * 1024

_COLOURS = ["#4c72b0", "#8172b2", "#dd8452", "#937860", "#55a868", "#da8bc3", "#c44e52", "#8c8c8c"]


# -- the machine ----------------------------------------------------------------------------


def describe_machine(cluster: LocalCluster) -> JSON:
    """Cores, memory, CPU model, Python, Go and Kubernetes versions, and the source revision."""
    cpu_model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
                break
    version = cluster.api("GET", "/version")
    return {
        "cores": os.cpu_count(),
        "memoryGiB": round(mem_kib / 1024 / 1024, 1),
        "cpuModel": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "go": _command_output(["go", "version"]),
        "kubernetes": version.get("gitVersion") if isinstance(version, dict) else None,
        "revision": _command_output(["git", "-C", str(Path(__file__).resolve().parents[2]),
                                     "describe", "--always", "--dirty"]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _command_output(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


# -- targets --------------------------------------------------------------------------------


def targets(results: JSON) -> list[JSON]:
    """The issue's targets, each with its measured number and whether it is met."""
    out: list[JSON] = []
    single = results.get("single") or {}
    if "operator" in single:
        own = single["operator"]["own"]["median"]
        out.append({
            "target": f"operator's own share of the freeze window under {OWN_SHARE_TARGET} s (median)",
            "measured": f"{own:.3f} s",
            "met": own < OWN_SHARE_TARGET,
            "gap": f"{own - OWN_SHARE_TARGET:+.3f} s ({own / OWN_SHARE_TARGET:.1f}x the target)",
        })
        ratio = single["ratio"]["median"]
        out.append({
            "target": f"freeze window at most {RATIO_TARGET:g}x the naive procedure's "
                      "(median of per-run ratios)",
            "measured": f"{ratio:.2f}x (operator {single['operator']['window']['median']:.2f} s, "
                        f"naive {single['naive']['window']['median']:.2f} s)",
            "met": ratio <= RATIO_TARGET,
            "gap": f"{ratio - RATIO_TARGET:+.2f}",
        })
    scale = results.get("scale") or {}
    rounds = scale.get("rounds") or []
    if rounds:
        biggest = max(rounds, key=lambda r: r["size"])
        size = biggest["size"]
        all_ok = biggest["succeeded"] == size and biggest["consistent"] == size
        max_ratio = biggest.get("maxRatioToLone", math.nan)
        label = f"at {size} groups" + ("" if size == SCALE_TARGET_GROUPS
                                       else f" (the target is for {SCALE_TARGET_GROUPS})")
        out.append({
            "target": f"{label}: every group Succeeded and Consistent",
            "measured": f"{biggest['succeeded']}/{size} Succeeded, {biggest['consistent']}/{size} Consistent",
            "met": all_ok,
            "gap": f"{size - min(biggest['succeeded'], biggest['consistent'])} group(s) short",
        })
        out.append({
            "target": f"{label}: no freeze window over {SCALE_RATIO_TARGET:g}x the lone-group median",
            "measured": f"max {biggest['window']['max']:.2f} s = {max_ratio:.2f}x the lone median "
                        f"{scale.get('loneMedian') or math.nan:.2f} s",
            "met": max_ratio <= SCALE_RATIO_TARGET,
            "gap": f"{max_ratio - SCALE_RATIO_TARGET:+.2f}x",
        })
    return out


# -- charts ---------------------------------------------------------------------------------


def chart_breakdown(single: JSON, path: Path) -> None:
    """Stacked bars of the freeze window per step: operator against naive (medians)."""
    fig, ax = plt.subplots(figsize=(9, 5))
    bars = ("snapgroup operator", "naive procedure")
    bottoms = [0.0, 0.0]
    for (key, label), colour in zip(COMMON_STEPS, _COLOURS, strict=True):
        values = [
            max(0.0, single["operator"]["steps"].get(key, {}).get("median", 0.0)),
            max(0.0, single["naive"]["steps"].get(key, {}).get("median", 0.0)),
        ]
        if not any(values):
            continue
        ax.barh(bars, values, left=bottoms, label=label, color=colour)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    for y, name in enumerate(("operator", "naive")):
        window = single[name]["window"]["median"]
        ax.text(bottoms[y], y, f"  {window:.2f} s (median window)", va="center", fontsize=9)
    ax.set_xlabel("seconds (median of each step)")
    ax.set_title("Freeze window, one bleater group: where the time goes")
    ax.set_xlim(0, max(bottoms) * 1.45 or 1)
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_runs(single: JSON, path: Path) -> None:
    """Freeze window of every run, operator and naive side by side."""
    operator = [r["window"] for r in single["operator"]["runs"]]
    naive = [r["window"] for r in single["naive"]["runs"]]
    runs = range(1, len(operator) + 1)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.4
    ax.bar([r - width / 2 for r in runs], operator, width, label="snapgroup operator", color=_COLOURS[0])
    ax.bar([r + width / 2 for r in runs], naive, width, label="naive procedure", color=_COLOURS[2])
    ax.set_xlabel("run")
    ax.set_ylabel("freeze window (s)")
    ax.set_xticks(list(runs))
    ax.set_title("Freeze window per run (interleaved)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def chart_scale(scale: JSON, path: Path) -> None:
    """Freeze window p50/max and time to all finished against the number of groups."""
    rounds = sorted(_largest_repeat(scale["rounds"]).values(), key=lambda r: r["size"])
    sizes = [r["size"] for r in rounds]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(sizes, [r["window"]["median"] for r in rounds], "o-", label="p50", color=_COLOURS[0])
    left.plot(sizes, [r["window"]["max"] for r in rounds], "s-", label="max", color=_COLOURS[6])
    lone = scale.get("loneMedian")
    if lone:
        left.axhline(lone * SCALE_RATIO_TARGET, ls="--", color="grey",
                     label=f"{SCALE_RATIO_TARGET:g}x lone median")
    left.set_xlabel("groups applied at once")
    left.set_ylabel("freeze window (s)")
    left.set_title("Freeze window per group")
    left.legend(fontsize=8)
    right.plot(sizes, [r["timeToAllFinished"] for r in rounds], "o-", color=_COLOURS[4])
    right.set_xlabel("groups applied at once")
    right.set_ylabel("seconds")
    right.set_title("Apply to all groups finished")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _largest_repeat(rounds: list[JSON]) -> dict[int, JSON]:
    """One round per size: for the repeated lone round, the median by time to all finished."""
    by_size: dict[int, list[JSON]] = {}
    for r in rounds:
        by_size.setdefault(r["size"], []).append(r)
    return {size: sorted(rs, key=lambda r: r["timeToAllFinished"])[len(rs) // 2]
            for size, rs in by_size.items()}


# -- markdown -------------------------------------------------------------------------------


def _s(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_s(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _summary_row(name: str, s: JSON, digits: int = 2) -> list[Any]:
    return [name, *(_s(s.get(k), digits) for k in ("median", "p90", "min", "max")), str(s.get("n", 0))]


def markdown(results: JSON) -> str:
    """The whole report."""
    m = results["machine"]
    parts = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`PYTHONPATH=tests python -m benchmarks --report docs/benchmarks`) "
        f"on {m['date']}, source `{m.get('revision') or '?'}`. The numbers below are one run on the "
        "machine described; they are measurements, not guarantees. Raw numbers: "
        "[results.json](results.json).",
        "",
        "## Machine",
        "",
        _table(["", ""], [
            ["CPU", f"{m['cores']} cores, {m['cpuModel']}"],
            ["memory", f"{m['memoryGiB']} GiB"],
            ["kernel", m["kernel"]],
            ["Python", m["python"]],
            ["Go", m.get("go") or "-"],
            ["Kubernetes", f"{m.get('kubernetes') or '-'} (the local cluster: real control plane and CSI "
                           "snapshot components as local processes, a node emulator instead of a kubelet)"],
        ]),
        "",
        "Everything runs on this one machine: etcd, the API server, the controllers, the CSI driver, "
        "the node emulator and its pods (PostgreSQL 15; FerretDB behind a layer that adds mongod's "
        "fsync lock, standing in for MongoDB; an S3 server standing in for MinIO; the data-writers), "
        "the operator and the benchmark itself. They all share the cores, so every number includes "
        "their contention.",
        "",
        "## Targets",
        "",
        _table(["target", "measured", "result"], [
            [t["target"], t["measured"], "met" if t["met"] else f"**missed** ({t['gap']})"]
            for t in results.get("targets", [])
        ]),
        "",
    ]
    if "operator" in (results.get("single") or {}):
        parts += _single_section(results["single"], results.get("config", {}))
    elif results.get("single", {}).get("error"):
        parts += ["## One group", "", f"Not measured: {results['single']['error']}", ""]
    if (results.get("scale") or {}).get("rounds"):
        parts += _scale_section(results["scale"])
    elif (results.get("scale") or {}).get("error"):
        parts += ["## Many groups at once", "", f"Not measured: {results['scale']['error']}", ""]
    parts += _bounds_section(results)
    return "\n".join(parts).rstrip() + "\n"


def _single_section(single: JSON, config: JSON) -> list[str]:
    op, naive = single["operator"], single["naive"]
    step_rows = []
    for key, label in COMMON_STEPS:
        o = op["steps"].get(key, {}).get("median")
        n = naive["steps"].get(key, {}).get("median")
        step_rows.append([label, _s(o, 3), _s(n, 3) if n is not None else "-"])
    step_rows.append(["**own share** (window minus waiting on pods and the cut)",
                      _s(op["own"]["median"], 3), _s(naive["own"]["median"], 3)])
    step_rows.append(["**freeze window**", _s(op["window"]["median"], 3), _s(naive["window"]["median"], 3)])
    verbs = ", ".join(f"{v} {c:g}" for v, c in op["requestsPerGroupByVerb"].items())
    runs = single["runs"]
    return [
        "## One group: the operator against a naive procedure",
        "",
        f"The bleater sample (PostgreSQL, MongoDB stand-in, MinIO stand-in, each on its own PVC) with "
        f"its data-writer writing a record to all three every second. {runs} runs of the sample "
        f"SnapshotGroup and {runs} of the naive procedure, interleaved (operator first on even runs, "
        "naive first on odd ones); before each run the writer is Ready and has written a new record "
        "everywhere, after it the run's snapshots are deleted. The operator runs as `snapgroup run` "
        f"(log level {config.get('operatorLogLevel', 'INFO')}).",
        "",
        "The naive procedure (`tests/benchmarks/naive.py`), with the same clients: scale the writer "
        "to 0 and wait until its pod is gone; `pg_backup_start` on a held session and MongoDB "
        "`fsync` lock; create each VolumeSnapshot in turn and wait for `readyToUse` before the next; "
        "`fsyncUnlock`, `pg_backup_stop`, scale back. Its window runs from the scale-down request to "
        "the scale-back request; its database connections are opened before the window.",
        "",
        f"Operator groups: {op['succeeded']}/{runs} Succeeded, {op['consistent']}/{runs} Consistent.",
        "",
        "### Freeze window (seconds)",
        "",
        _table(["", "median", "p90", "min", "max", "runs"], [
            _summary_row("snapgroup operator", op["window"], 3),
            _summary_row("naive procedure", naive["window"], 3),
            _summary_row("ratio operator / naive (per run)", single["ratio"], 3),
            _summary_row("operator's own share", op["own"], 3),
            _summary_row("apply to Succeeded (operator)", op["applyToSucceeded"], 3),
        ]),
        "",
        "Per-run ratios: " + ", ".join(f"{r:.2f}" for r in single["ratios"]) + ".",
        "",
        "### Where the window goes (median seconds per step)",
        "",
        _table(["step", "operator", "naive"], step_rows),
        "",
        "For the operator the steps come from `status.freeze.breakdown`: writer drain is "
        "`waitingOnPods`, waiting for the cut is `waitingOnCut` (VolumeSnapshots created → every "
        "`creationTime` set), \"requests\" are the rest of the isolate and cut steps, and \"between "
        "steps\" is the window not inside any step (journal writes to the status). For the naive "
        "procedure waiting for the cut is the three snapshots one after the other, each until "
        f"`readyToUse` (median {_s(naive['snapshotEach']['median'], 3)} s each).",
        "",
        "![freeze window breakdown](freeze-breakdown.png)",
        "",
        "![freeze window per run](freeze-per-run.png)",
        "",
        "### API requests per group",
        "",
        f"- The operator's adapter (`snapgroup_kubernetes_requests_total`): median "
        f"{_s(op['requestsPerGroup']['median'], 0)} per group ({verbs}). kopf's own watch and "
        "annotation traffic is not in this counter.",
        f"- The API server's `apiserver_request_total` grew by a median of "
        f"{_s(op['apiserverRequestsPerGroup']['median'], 0)} per operator run and "
        f"{_s(naive['apiserverRequestsPerRun']['median'], 0)} per naive run, counting every client "
        "of the cluster during the run (controllers, CSI sidecars, the node emulator, kopf, the "
        "benchmark's own watches), for context only.",
        "",
    ]


def _scale_section(scale: JSON) -> list[str]:
    rows = []
    for r in sorted(scale["rounds"], key=lambda r: (r["size"], r["repeat"])):
        rows.append([
            f"{r['size']}" + (f" (#{r['repeat'] + 1})" if r["size"] == 1 else ""),
            _s(r["timeToAllFinished"], 1),
            f"{r['succeeded']}/{r['size']}",
            f"{r['consistent']}/{r['size']}",
            _s(r["window"]["median"], 2),
            _s(r["window"]["max"], 2),
            _s(r.get("maxRatioToLone"), 2),
            _s(r["operatorCpuSeconds"], 1),
            _s(r["operatorPeakRssBytes"] / MIB, 0),
            _s(r["operatorRequestsPerGroup"], 0),
            _s(r["apiserverRequestsPerGroup"], 0),
        ])
    return [
        "## Many groups at once",
        "",
        "N namespaces, each with a data-writer writing only to S3 and one PVC-backed S3 server (the "
        "MinIO stand-in) behind a Service pinned to `127.96.<10+i>.12`; all pods Ready and every "
        "writer writing before N SnapshotGroups (writer `data-writer`, service `minio`) are created "
        "at once. The round of one group runs several times: its median "
        f"({_s(scale.get('loneMedian'), 3)} s) is the lone-group window. Namespaces are deleted "
        "between rounds. CPU and peak RSS are the operator process's, sampled every 0.2 s from the "
        "first create to the last group finished.",
        "",
        _table(["groups", "apply → all finished (s)", "Succeeded", "Consistent", "window p50 (s)",
                "window max (s)", "max / lone median", "operator CPU (s)", "operator peak RSS (MiB)",
                "operator requests / group", "API server requests / group"], rows),
        "",
        "![scale](scale.png)",
        "",
    ]


def _bounds_section(results: JSON) -> list[str]:
    """What bounds each missed target, from the breakdowns measured."""
    lines = ["## What bounds the numbers", ""]
    single = results.get("single") or {}
    if "operator" in single:
        op = single["operator"]["steps"]
        own_parts = {label: op[key]["median"] for key, label in COMMON_STEPS
                     if key not in ("drain", "cutWait") and not math.isnan(op[key]["median"])}
        ranked = sorted(own_parts.items(), key=lambda kv: kv[1], reverse=True)
        lines.append("- **Operator's own share**, median by step: "
                     + ", ".join(f"{label} {v:.3f} s" for label, v in ranked) + ".")
        waits = {"writer drain": op["drain"]["median"], "waiting for the cut": op["cutWait"]["median"]}
        lines.append("- **Operator window** besides its own share: "
                     + ", ".join(f"{k} {v:.3f} s" for k, v in waits.items())
                     + ". The drain is the writer finishing its tick and exiting on SIGTERM plus the "
                     "node emulator reporting the pod gone; the cut is the snapshot controller, the CSI "
                     "sidecar and the driver, split up below.")
        naive = single["naive"]["steps"]
        lines.append(f"- **Naive window**: drain {naive['drain']['median']:.3f} s, sequential "
                     f"snapshots to readyToUse {naive['cutWait']['median']:.3f} s.")
        csi = single.get("csi")
        if csi:
            o, n = csi["operator"], csi["naive"]
            by_pvc = ", ".join(f"{pvc} {v['median']:.3f} s" for pvc, v in o["archiveSecondsByPvc"].items())
            lines.append(
                "- **The cut, from the CSI driver's log** (medians): the driver captures each volume in "
                f"{o['archiveSeconds']['median']:.3f} s ({by_pvc}) and answers CreateSnapshot with "
                "`creationTime` right after; `readyToUse` follows once the capture is compressed (the "
                "driver's upload, outside the operator's window, inside the naive one). In the "
                f"operator's concurrent cut the driver is busy {o['driverSpan']['median']:.3f} s (first "
                f"cut to last capture done) of the {op['cutWait']['median']:.3f} s waited; the other "
                f"{o['controllersShare']['median']:.3f} s are the snapshot controller and the sidecar "
                "(VolumeSnapshotContent created, driver called, the answer copied back to the "
                "VolumeSnapshot). Per naive snapshot: create request to cut "
                f"{n['createToCut']['median']:.3f} s, capture {n['archiveSeconds']['median']:.3f} s, "
                f"capture done to `readyToUse` seen (the upload, then the controllers) "
                f"{n['archiveToReadySeen']['median']:.3f} s.")
            pipe = csi.get("pipeline") or {}
            if pipe:
                lines.append(
                    "- **The snapshot controller and the sidecar, from their own metrics** (means over "
                    f"the {pipe['controllerCreateSnapshots']:g} snapshots of this part): the snapshot "
                    f"controller's CreateSnapshot operation {pipe['controllerCreateMeanSeconds']:.3f} s, "
                    "of which the sidecar's call to the driver "
                    f"{pipe['sidecarCreateMeanSeconds']:.3f} s; the sidecar's work queue: "
                    f"{pipe['sidecarQueueMeanSeconds']:.3f} s waiting and "
                    f"{pipe['sidecarWorkMeanSeconds']:.3f} s working per item, "
                    f"{pipe['sidecarQueueRetries']:g} retries.")
    scale = results.get("scale") or {}
    rounds = scale.get("rounds") or []
    lone_rounds = [r for r in rounds if r["size"] == 1]
    if rounds and lone_rounds:
        biggest = max(rounds, key=lambda r: r["size"])
        keys = ("waitingOnPods", "waitingOnCut", "operator")

        def med(rs: list[JSON], key: str) -> float:
            values = sorted(g["breakdown"].get(key, math.nan) for r in rs for g in r["groups"])
            return values[len(values) // 2] if values else math.nan

        growth = {k: (med(lone_rounds, k), med([biggest], k)) for k in keys}
        lines.append(
            f"- **{biggest['size']} groups against one**, median per group: "
            + ", ".join(f"{k} {a:.2f} s → {b:.2f} s" for k, (a, b) in growth.items())
            + f". Operator CPU {biggest['operatorCpuSeconds']:.1f} s over "
            f"{biggest['timeToAllFinished']:.1f} s of wall time on {results['machine']['cores']} cores.")
        for r in sorted((r for r in rounds if r["size"] > 1), key=lambda r: r["size"]):
            csi = r.get("csi") or {}
            if not csi.get("snapshots"):
                continue
            spread = csi["lastCutAfterApply"] - csi["firstCutAfterApply"]
            rate = (csi["snapshots"] - 1) / spread if spread > 0 else math.nan
            lines.append(
                f"- **The snapshot pipeline at {r['size']} groups**: the driver cut {csi['snapshots']} "
                f"snapshot(s) between {csi['firstCutAfterApply']:.2f} s and {csi['lastCutAfterApply']:.2f} s "
                f"after the first group was created, {rate:.2f} per second, each volume captured in a "
                f"median {csi['archiveSeconds']['median']:.3f} s (max {csi['archiveSeconds']['max']:.3f} s); "
                "the sidecar's call to the driver took a mean "
                f"{(csi.get('pipeline') or {}).get('sidecarCreateMeanSeconds', math.nan):.3f} s. The "
                "groups' writers were all isolated within seconds of each other, so each group's "
                "window is its place in that line."
                + (f" The API server served {csi['apiRequestsPerSecond']:.1f} requests/s on VolumeSnapshots "
                   f"and their contents meanwhile ({sum(csi['apiRequests'].values()) / csi['snapshots']:.0f} "
                   "per snapshot, every client)." if csi.get("apiRequests") else ""))
        if any((r.get("csi") or {}).get("snapshots") for r in rounds if r["size"] > 1):
            lines.append(
                "- At scale the windows are bound by the writers' drain, not by the operator or the "
                "cut: every namespace's writer pod must finish its tick, exit and be reported gone by "
                "the node emulator while 2N processes share 2 cores with the control plane. The "
                "operator bounds open windows (`--max-windows`, 8 by default), so later groups queue "
                "with nothing frozen; a lower bound trades total time for windows closer to a lone "
                "group's.")
        failed = [g for g in biggest["groups"] if g["phase"] != "Succeeded"]
        if failed:
            reasons = sorted({str(g.get("reason")) for g in failed})
            windows = sorted(g["window"] for g in failed)
            lines.append(
                f"- **{len(failed)} of {biggest['size']} groups failed** ({', '.join(reasons)}), with "
                f"windows of {windows[0]:.1f}-{windows[-1]:.1f} s: the freeze budget (60 s) ran out while "
                "they waited for their cut, and the operator thawed them and discarded their snapshots "
                "(fail closed), as designed. The operator itself was not the bottleneck: "
                f"{biggest['operatorCpuSeconds']:.1f} s of CPU over the round.")
        slowest = max(biggest["groups"], key=lambda g: g["window"])
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in slowest["breakdown"].items())
        lines.append(f"- Slowest group at {biggest['size']}: {slowest['namespace']}, "
                     f"{slowest['window']:.2f} s ({parts}).")
    notes = results.get("notes") or []
    lines += [f"- {n}" for n in notes]
    return [*lines, ""]


def write(report_dir: Path, results: JSON) -> None:
    """results.json, the charts, and report.md (with the targets computed from the results)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    results["targets"] = targets(results)
    (report_dir / "results.json").write_text(json.dumps(_finite(results), indent=2) + "\n")
    single = results.get("single") or {}
    if "operator" in single:
        chart_breakdown(single, report_dir / "freeze-breakdown.png")
        chart_runs(single, report_dir / "freeze-per-run.png")
    if (results.get("scale") or {}).get("rounds"):
        chart_scale(results["scale"], report_dir / "scale.png")
    (report_dir / "report.md").write_text(markdown(results))


def _finite(value: Any) -> Any:
    """NaN is not JSON: write null instead."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


_NUMBER_KEYS = {"window", "loneMedian", "maxRatioToLone", "ratioToLone", "median", "p90", "min", "max"}


def _restore_nans(value: Any) -> Any:
    """Undo _finite for the numbers the report computes with (null back to NaN)."""
    if isinstance(value, dict):
        return {k: math.nan if v is None and k in _NUMBER_KEYS else _restore_nans(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_nans(v) for v in value]
    return value


def rewrite(report_dir: Path) -> None:
    """Write report.md and the charts again from the results.json already in report_dir."""
    results = _restore_nans(json.loads((report_dir / "results.json").read_text()))
    write(report_dir, results)
