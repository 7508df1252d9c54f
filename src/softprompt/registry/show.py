"""`softprompt registry show TASK`: a task's registered versions over time, with their metrics, data version,
run id and stage, and (`--plot FILE.png`) the main score of each version as a chart.

Read-only: `registry.history` reads the versions (the `meta:` block of each `.dvc` file in git, so no prompt
files need to be pulled) and this module lays them out. It imports only `versions`, never the package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from softprompt.errors import SoftpromptError
from softprompt.io import atomic_write_bytes
from softprompt.registry.versions import Version

PLOT_SUFFIX = ".png"


def rows(found: list[Version], stage: str) -> list[dict[str, Any]]:
    """One row per version (the caller, `registry.history`, reads the versions), oldest first."""
    return [row(v, stage) for v in found]


def row(version: Version, stage: str) -> dict[str, Any]:
    meta = version.meta
    metrics = meta.get("metrics") or {version.main_metric: version.value}  # versions before metrics were recorded
    return {"version": version.name, "tag": version.tag,
            "registered_at": version.registered_at, "main_metric": version.main_metric, "value": version.value,
            "metrics": metrics, "data": data_label(meta), "run_id": version.run_id,
            "stage": stage if version.production else "", "production": version.production}


def data_label(meta: dict[str, Any]) -> str:
    """The data version: the pipeline's content fingerprint, else the training files' md5s, else unknown."""
    if meta.get("data_fingerprint"):
        return f"fingerprint {meta['data_fingerprint']}"
    files = meta.get("data_files") or {}
    return ", ".join(f"{name} {md5.removeprefix('md5:')[:12]}" for name, md5 in sorted(files.items())) or "unknown"


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table, production marked with `*`."""
    header = ("", "version", "registered", "metrics", "data", "run id", "stage")
    lines = [(("*" if r["production"] else ""), r["version"], r["registered_at"],
              ", ".join(f"{k}={v:g}" for k, v in r["metrics"].items() if isinstance(v, int | float)),
              r["data"], r["run_id"], r["stage"]) for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *lines])


def plot(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """The main score of each version, in registration order, the production version marked; a PNG file."""
    path = Path(path)
    if path.suffix.lower() != PLOT_SUFFIX:
        raise SoftpromptError(f"--plot {path}: give a file name ending in {PLOT_SUFFIX}")
    from softprompt.report import figure_png, pyplot

    plt = pyplot()
    values = [r["value"] for r in rows]
    names = [r["version"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(rows) + 3), 3.6))
    ax.plot(names, values, marker="o", label=rows[0]["main_metric"])
    prod = [i for i, r in enumerate(rows) if r["production"]]
    if prod:
        ax.plot([names[i] for i in prod], [values[i] for i in prod], linestyle="", marker="*", markersize=16,
                color="#dd8452", label="production")
    ax.set(xlabel="version (registration order)", ylabel=rows[0]["main_metric"],
           title=f"{rows[0]['tag'].split('@')[0]}: {rows[0]['main_metric']} per version")
    ax.grid(alpha=0.3)
    ax.legend()
    return atomic_write_bytes(path, figure_png(fig))
