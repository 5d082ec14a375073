"""Summarise ncu's per-SASS-instruction warp sampling (`--page source --csv --print-source sass`):
the stall reasons over the whole kernel and the most-sampled instructions. Used by
scripts/ncu_stalls; `python3 scripts/ncu_stalls.py FILE.csv [TOP]` works on a saved CSV."""
import csv
import sys


def load(path):
    rows = list(csv.reader(open(path)))
    # Row 0 names the kernel; row 1 is the header; the rest are instructions.
    header = rows[1]
    col = {h: i for i, h in enumerate(header)}
    reasons = [h for h in header if h.startswith("stall_") and "(Not Issued)" not in h]
    out = []
    for r in rows[2:]:
        if len(r) < len(header):
            continue
        try:
            samples = int(r[col["Warp Stall Sampling (All Samples)"]] or 0)
        except ValueError:
            continue
        stalls = {s[len("stall_"):]: int(r[col[s]] or 0) for s in reasons}
        out.append((len(out), samples, r[col["Source"]].strip(), stalls))
    return rows[0], out


def main():
    kernel, ins = load(sys.argv[1])
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    total = sum(i[1] for i in ins) or 1
    print(" ".join(kernel)[:160])
    print(f"{total} samples over {len(ins)} instructions")
    overall = {}
    for _, _, _, st in ins:
        for k, v in st.items():
            overall[k] = overall.get(k, 0) + v
    for k, v in sorted(overall.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {k:24} {100 * v / total:5.1f} %")
    print(f"top {top} instructions (index in the kernel's SASS, share of samples, top reasons):")
    for idx, n, src, st in sorted(ins, key=lambda i: -i[1])[:top]:
        why = " ".join(f"{k}={v}" for k, v in sorted(st.items(), key=lambda kv: -kv[1])[:3] if v)
        print(f"  {idx:5d} {100 * n / total:5.1f} %  {src[:64]:64} {why}")


if __name__ == "__main__":
    main()
