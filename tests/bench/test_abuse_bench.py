"""bench.abuse_bench sends what its docstring says: checked against the codecs, without a server."""

from __future__ import annotations

import pytest

from bench.abuse_bench import short_jpeg, spp_tiffs, zero_png
from restore.service.errors import CorruptImage, UnsupportedMediaType
from restore.service.images import codecs


def test_the_attack_payloads_are_what_the_benchmark_reports() -> None:
    zero = zero_png()
    assert len(zero) < 200_000 and codecs.probe(zero, 10**8) == codecs.ImageHeader(10000, 10000, 1)
    jpeg = short_jpeg()
    assert len(jpeg) < 1000 and codecs.probe(jpeg, 10**8).pixels == 10**8
    with pytest.raises(CorruptImage):
        codecs.decode(jpeg, 10**8)
    for tiff in spp_tiffs():  # 1000 and 65535 samples per pixel: refused from the header
        with pytest.raises(UnsupportedMediaType, match="samples per pixel"):
            codecs.probe(tiff, 10**8)
