"""The bench document as rich tables: loaders, training steps, the batch-size limit, and packed training."""

from __future__ import annotations

from typing import Any


def print_tables(doc: dict, console: Any) -> None:
    """Print the document's rows grouped as a user reads them: can the input keep up, how fast, how big."""
    from rich.table import Table

    rows = doc["rows"]
    machine = doc["machine"]
    title_suffix = f"{machine['device_name']} ({machine['device']}), torch {machine['torch_version']}"

    t = Table(title=f"Loader throughput, images/s (train mode, augmentation on) — {title_suffix}")
    for c, j in (("res", "right"), ("backend", "left"), ("batch", "right"), ("images/s", "right"),
                 ("x pil", "right"), ("status", "left")):
        t.add_column(c, justify=j)
    for r in rows:
        if r["kind"] == "loader":
            t.add_row(str(r["res"]), r["backend"], str(r["batch_size"]), _fmt(r["images_per_s"]),
                      _fmt(r["ratio"], "{:.1f}x"), r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}")
    console.print(t)

    t = Table(title=f"Training step, images/s ({doc['settings']['resolved']['precision']}, "
                    f"{'channels-last' if doc['settings']['channels_last'] else 'NCHW'})")
    for c in ("res", "arch", "batch", "synthetic", "best loader", "loader-fed", "fed/synthetic"):
        t.add_column(c, justify="left" if c in ("arch", "best loader") else "right")
    by_key = {(r["arch"], r["res"], r["kind"]): r for r in rows}
    for r in rows:
        if r["kind"] != "train_synthetic":
            continue
        fed = by_key.get((r["arch"], r["res"], "train_loader"), {})
        t.add_row(str(r["res"]), r["arch"], str(r["batch_size"]),
                  _fmt(r["images_per_s"]) if r["status"] == "ok" else r["status"],
                  fed.get("backend") or "-",
                  _fmt(fed.get("images_per_s")) if fed.get("status") == "ok" else (fed.get("status") or "-"),
                  _fmt(fed.get("ratio"), "{:.0%}"))
    console.print(t)

    gb = doc["settings"]["resolved"]["predict_gpu_gb"]
    t = Table(title=f"Largest batch ({doc['settings']['resolved']['memory_precision']}, "
                    f"{doc['settings']['optimizer']}) and memory per image")
    for c in ("res", "arch", f"predicted @ {gb:g} GiB", "measured", "MiB/image measured", "MiB/image predicted"):
        t.add_column(c, justify="left" if c == "arch" else "right")
    for r in rows:
        if r["kind"] == "batch_limit":
            measured = r["max_batch_measured"]
            t.add_row(str(r["res"]), r["arch"], str(r["max_batch_predicted"]),
                      "-" if measured is None else f"{measured}{'+' if r['max_batch_capped'] else ''}",
                      _fmt(r["mem_per_sample_mb"]), _fmt(r["predicted_mem_per_sample_mb"]))
    console.print(t)
    print_packed(doc, console)


def print_packed(doc: dict, console: Any) -> None:
    """Packed training against the same K models stepped in turn, one line per (res, arch, K); where the
    section was off, its one-line reason (which says how to turn it on)."""
    from rich.table import Table

    rows = [r for r in doc["rows"] if r["kind"] == "train_packed"]
    for reason in dict.fromkeys(r["reason"] for r in rows if not r["arch"]):
        console.print(f"Packed training: {reason}", highlight=False)
    measured = [r for r in rows if r["arch"] and r["backend"] == "packed"]
    if not measured:
        return
    seq = {(r["arch"], r["res"], r["packed_k"]): r for r in rows if r["backend"] == "sequential"}
    t = Table(title=f"Packed training, images/s of all K models: one step of K against K steps in turn "
                    f"(fastai07, {doc['settings']['resolved']['precision']}, batch {measured[0]['batch_size']} "
                    "per model, synthetic)")
    for c in ("res", "arch", "K", "packed", "sequential", "packed/sequential", "packed step ms"):
        t.add_column(c, justify="left" if c == "arch" else "right")
    for r in measured:
        s = seq.get((r["arch"], r["res"], r["packed_k"]), {})
        ok = r["status"] == "ok"
        t.add_row(str(r["res"]), r["arch"], str(r["packed_k"]),
                  _fmt(r["images_per_s"]) if ok else f"{r['status']}: {r['reason']}",
                  _fmt(s.get("images_per_s")), _fmt(r["ratio"], "{:.2f}x"), _fmt(r["step_ms"]))
    console.print(t)


def _fmt(value: float | None, spec: str | None = None) -> str:
    """Numbers for a table: three significant digits for small rates (a CPU trains < 1 image/s at 600 px)."""
    if value is None:
        return "-"
    if spec is None:
        spec = "{:,.1f}" if abs(value) >= 10 else "{:.3g}"
    return spec.format(value)
