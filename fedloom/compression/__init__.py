"""Compression of client-to-server updates: codecs (pure numpy) and their Flower glue."""

from fedloom.compression.codecs import CODECS, Codec, Float16Codec, Int8Codec, TopKCodec, make_codec
from fedloom.compression.flower import COMPRESSION_RECORD, compression_mod, decode_compressed

__all__ = [
    "CODECS",
    "COMPRESSION_RECORD",
    "Codec",
    "Float16Codec",
    "Int8Codec",
    "TopKCodec",
    "compression_mod",
    "decode_compressed",
    "make_codec",
]
