#!/usr/bin/env python3
"""Reference values for the window statistics (gateway/src/window.rs).

Provenance: computed here, independently of the gateway's code, with exact
rational arithmetic (Python's fractions.Fraction) over the inputs as the
gateway receives them (IEEE doubles), rounded to float only at the end.
Definitions (the ones the summary documents):
  mean, population variance M2/n, std = sqrt(var), rms = sqrt(mean(x^2)),
  p2p = max - min, crest = max(|max|, |min|) / rms,
  skewness g1 = sqrt(n) * M3 / M2^1.5, kurtosis = n * M4 / M2^2 (Pearson),
  slope = least-squares slope of value over time in seconds, times 3600,
  quantile q = the sorted value of rank floor(q * (n - 1)).
Regenerate: python3 gateway/tests/data/make_stats_vectors.py > gateway/tests/data/stats-vectors.json
"""
import json
import math
from fractions import Fraction as F


def stats(name, values, ts):
    n = len(values)
    xs = [F(v) for v in values]
    mean = sum(xs) / n
    m2 = sum((x - mean) ** 2 for x in xs)
    m3 = sum((x - mean) ** 3 for x in xs)
    m4 = sum((x - mean) ** 4 for x in xs)
    var = m2 / n
    rms = math.sqrt(float(sum(x * x for x in xs) / n))
    out = {
        "name": name,
        "values": values,
        "ts_ms": ts,
        "count": n,
        "min": min(values),
        "max": max(values),
        "mean": float(mean),
        "std": math.sqrt(float(var)),
        "rms": rms,
        "p2p": max(values) - min(values),
        "crest": (max(abs(max(values)), abs(min(values))) / rms) if rms > 0 else None,
        "skewness": float(math.sqrt(n) * m3 / F(math.sqrt(float(m2))) ** 3) if m2 > 0 and n > 1 else None,
        "kurtosis": float(n * m4 / (m2 * m2)) if m2 > 0 and n > 1 else None,
        "first": values[ts.index(min(ts))],
        "last": values[len(ts) - 1 - ts[::-1].index(max(ts))],
    }
    t = [F(x - ts[0], 1000) for x in ts]
    mt = sum(t) / n
    stt = sum((a - mt) ** 2 for a in t)
    stv = sum((a - mt) * (x - mean) for a, x in zip(t, xs))
    out["slope_per_hour"] = float(stv / stt * 3600) if stt > 0 else None
    s = sorted(values)
    out["quantiles"] = {str(q): s[math.floor(q * (n - 1))] for q in (0.5, 0.9, 0.95, 0.99)}
    return out


T0 = 1_700_000_000_000
vectors = []
v = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]
vectors.append(stats("textbook", v, [T0 + 100 * i for i in range(len(v))]))
v = [math.sin(2 * math.pi * i / 100) for i in range(1000)]
vectors.append(stats("sine", v, [T0 + i for i in range(1000)]))
v = [1e9 + x for x in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]]
vectors.append(stats("huge_offset", v, [T0 + 100 * i for i in range(len(v))]))
vectors.append(stats("single", [3.25], [T0]))
vectors.append(stats("constant", [7.5] * 500, [T0 + 10 * i for i in range(500)]))
v = [10.0 + 0.5 * i for i in range(600)]
vectors.append(stats("ramp", v, [T0 + 1000 * i for i in range(600)]))
v = [round(-math.log((i + 0.5) / 400), 6) for i in range(400)]
vectors.append(stats("exponential", v, [T0 + (i * 7919) % 400 for i in range(400)]))
v = [0.001 * math.sin(i) + 10000.0 for i in range(2000)]
vectors.append(stats("tiny_vibration_on_offset", v, [T0 + i for i in range(2000)]))
print(json.dumps(vectors, indent=1))
