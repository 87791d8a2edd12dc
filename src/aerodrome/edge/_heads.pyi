# The C module `_heads.c`, built with the compiled edge (see `native`).

def header_lines(
    raw: bytes, start: int, cut: tuple[bytes, ...], /
) -> tuple[int, list[bytes], bool, bool]: ...
