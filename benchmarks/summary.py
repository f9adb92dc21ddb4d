"""The few lines ``personalive-trt bench`` prints from a report (every field: :mod:`personalive_trt.bench.benchmark`)."""
from __future__ import annotations


def summary(report: dict) -> str:
    if report["mode"] == "offline":
        return offline_summary(report)
    s, c, g = report["step_ms"], report["chunk_latency_ms"], report["glass_to_glass_ms"]
    lines = [
        f"{report['runtime']} on {report['device']} ({report['dtype']}, window {report['config']['window']}, "
        f"{report['config']['resolution']}px, {report['keyframes']} keyframes, vae {report['vae']})",
        f"  step      p50 {s['p50']:.1f}  p95 {s['p95']:.1f}  p99 {s['p99']:.1f} ms   {report['fps']:.2f} fps "
        f"({report['throughput_mode']}), {report['per_frame_ms']:.1f} ms/frame",
        f"  chunk     p50 {c['p50']:.1f}  p95 {c['p95']:.1f}  p99 {c['p99']:.1f} ms   glass-to-glass p50 "
        f"{g['p50']:.1f} ms at {report['capture_fps']:.2f} fps capture",
        f"  fusion    {report['reference_fusion_ms']:.1f} ms (cold {report['reference_fusion_cold_ms']:.1f}), first "
        f"frame {report['time_to_first_frame_ms']:.1f} ms",
    ]
    stages = report["stages_ms"]
    parts = "  ".join(f"{role} {ms:.1f}" for role, ms in stages["networks"].items())
    lines.append(f"  eager     {stages['eager_step_p50']:.1f} ms = {parts}  glue {stages['glue']:.1f}")
    flops = report["flops"]
    if flops["tflops"] is not None:
        lines.append(f"  compute   {flops['per_step'] / 1e12:.3f} TFLOP/step, {flops['tflops']:.3f} TFLOP/s")
    memory = report["memory"]
    peak = memory.get("peak_allocated_mb", memory.get("peak_mb"))
    lines.append(f"  memory    peak {peak} MiB ({memory['kind']})")
    if "compare" in report:
        cmp = report["compare"]
        lines.append(f"  compare   reference Animator step p50 {cmp['step_ms']['p50']:.1f} ms; speed ratio "
                     f"(reference / runtime) {cmp['speedup']:.2f}x")
    return "\n".join(lines)


def offline_summary(report: dict) -> str:
    s, memory = report["step_ms"], report["memory"]
    peak = memory.get("peak_allocated_mb", memory.get("peak_mb"))
    return "\n".join([
        f"{report['runtime']} on {report['device']} ({report['dtype']}, {report['config']['resolution']}px, "
        f"vae {report['vae']}): {report['frames']} frames, {report['windows']} windows, "
        f"{report['keyframe_banks']} keyframe banks",
        f"  per frame {report['per_frame_ms']:.1f} ms   {report['fps']:.2f} fps (mean of "
        f"{report['measured_passes']} pass(es) over the clip)",
        f"  window    p50 {s['p50']:.1f}  p95 {s['p95']:.1f}  max {s['max']:.1f} ms",
        f"  fusion    {report['reference_fusion_ms']:.1f} ms (cold {report['reference_fusion_cold_ms']:.1f}), "
        f"inputs prepared in {report['prepare_s']:.1f} s",
        f"  memory    peak {peak} MiB ({memory['kind']})",
    ])
