"""What per-message deflate would cost each websocket: the memory of aiohttp's compressor once it has
written one payment-sized frame (realtime/websocket.py declines the extension).

    python -m bench.deflate_memory

Makes the compressors as aiohttp's websocket writer does (`ZLibCompressor`, level `Z_BEST_SPEED`,
`wbits=-15`), each compressing one frame with a sync flush, and prints the growth of this process's
resident memory per compressor.
"""

from __future__ import annotations

import os
import zlib

from aiohttp.compression_utils import ZLibCompressor

from bench.procs import rss_kib

FRAME = b'42["payment-status",{"reference":"bf346161-d3c4-4398-af75-d6e222ce214a","status":"SUCCESSFUL"}]' * 4


def main(count: int = 2000) -> None:
    before = rss_kib(os.getpid())
    kept = []
    for _ in range(count):
        compressor = ZLibCompressor(level=zlib.Z_BEST_SPEED, wbits=-15)
        compressor.compress_sync(FRAME)
        compressor.flush(zlib.Z_SYNC_FLUSH)
        kept.append(compressor)
    print(f"{(rss_kib(os.getpid()) - before) / count:.1f} KiB resident per compressor ({count} compressors)")


if __name__ == "__main__":
    main()
