"""Streaming benchmark of the runtime: the same command as ``personalive-trt bench``.

Usage:
    python benchmarks/bench_stream.py --backend torch --weights synthetic:full --window 4 --keyframes 0 \
        --dtype fp16 --json bench.json [--no-graph] [--compare]
    python benchmarks/bench_stream.py --weights synthetic --resolution 64 --warmup 0 --calls 2 --compare  # CPU

Every field of the report is defined in :mod:`personalive_trt.bench.benchmark`.
"""
if __name__ == "__main__":
    from personalive_trt.cli.bench import main

    main()
