"""hbridge vs PyTorch, side by side: `hbridge bench --json H.json` and `reference/bench_torch.py --json T.json` on
the same checkpoint and sizes, paired by workload name.

Usage: python reference/bench_compare.py H.json T.json   (or bench_torch.py ... --compare H.json)

Workload names (both tools):
  load_s                   seconds, lower is better
  und_prefill_ms           milliseconds, lower is better
  und_decode_tokens_per_s  tokens per second, higher is better
  gen_step_ms              milliseconds, lower is better
  time_to_image_ms         milliseconds, lower is better
  peak_gpu_bytes           bytes, lower is better

The "x" column after each PyTorch mode is hbridge's advantage: PyTorch / hbridge for times and bytes,
hbridge / PyTorch for tokens/s; above 1 means hbridge is faster (or smaller). Note that hbridge's peak_gpu_bytes
is memory in use on the device (cuMemGetInfo), PyTorch's is its allocator's max_memory_allocated.
"""
import json
import os
import sys

NAMES = ["load_s", "und_prefill_ms", "und_decode_tokens_per_s", "gen_step_ms", "time_to_image_ms", "peak_gpu_bytes"]
HIGHER_IS_BETTER = {"und_decode_tokens_per_s"}


def load(path):
    with open(path) as f:
        return json.load(f)


def hbridge_values(report):
    """name -> value from `hbridge bench --json` ({"rows": [{name, value, unit, ...}]})."""
    rows = report.get("rows") if isinstance(report, dict) else None
    if rows is None:
        raise SystemExit("hbridge JSON: no 'rows' (expected the output of `hbridge bench --json`)")
    return {r["name"]: (r.get("value"), r.get("unit", "")) for r in rows}


def torch_values(report):
    """(mode, name) -> value, and the modes in order, from bench_torch.py --json ({"records": [...]}, or a list)."""
    recs = report["records"] if isinstance(report, dict) else report
    vals, modes = {}, []
    for r in recs:
        vals[(r["mode"], r["name"])] = (r.get("value"), r.get("unit", ""))
        if r["mode"] != "-" and r["mode"] not in modes:
            modes.append(r["mode"])
    return vals, modes or ["-"]


def advantage(name, hb, pt):
    if hb is None or pt is None or hb <= 0 or pt <= 0:
        return None
    return hb / pt if name in HIGHER_IS_BETTER else pt / hb


def fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 1e6:
        return f"{v:.4g}"
    return f"{v:.3f}"


def compare(hbridge, torch_report, out=sys.stdout):
    hb = hbridge_values(hbridge)
    pt, modes = torch_values(torch_report)
    hdr = f"{'workload':<26} {'unit':<9} {'hbridge':>12}"
    for m in modes:
        hdr += f" {'torch ' + m:>15} {'x':>6}"
    print(f"hbridge: {hbridge.get('device', '?')}  |  PyTorch: {torch_report.get('device', '?')} "
          f"{torch_report.get('dtype', '')}", file=out)
    models = [os.path.basename(os.path.normpath(r["model"])) for r in (hbridge, torch_report) if r.get("model")]
    if len(set(models)) > 1:
        print(f"warning: different checkpoints? hbridge ran {models[0]}, PyTorch {models[1]}", file=out)
    print(hdr, file=out)
    names = NAMES + sorted({n for _, n in pt} - set(NAMES)) + sorted(set(hb) - set(NAMES))
    for name in names:
        h, hu = hb.get(name, (None, ""))
        cells = []
        unit = hu
        seen = name in hb
        for m in modes:
            # load_s is measured once ("-"): show it under every mode
            p, pu = pt.get((m, name), pt.get(("-", name), (None, "")))
            seen = seen or (m, name) in pt or ("-", name) in pt
            unit = unit or pu
            a = advantage(name, h, p)
            cells.append(f" {fmt(p):>15} {'' if a is None else f'{a:.2f}':>6}")
        if seen:
            print(f"{name:<26} {unit:<9} {fmt(h):>12}" + "".join(cells), file=out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    compare(load(argv[0]), load(argv[1]))


if __name__ == "__main__":
    main()
