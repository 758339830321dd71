import pytest
import torch

from mmcompress.quant.packing import pack_codes, packed_nbytes, unpack_codes


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_round_trip_is_exact(bits):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = torch.randint(lo, hi + 1, (33, 7), dtype=torch.int8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(codes.numel(), bits)
    assert torch.equal(unpack_codes(packed, bits, (33, 7)), codes)


def test_sizes_and_errors():
    assert packed_nbytes(128, 4) == 64 and packed_nbytes(128, 3) == 48 and packed_nbytes(5, 2) == 2
    with pytest.raises(ValueError, match="outside the signed 3-bit range"):
        pack_codes(torch.tensor([5], dtype=torch.int8), 3)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_codes(torch.zeros(3, dtype=torch.uint8), 4, (10,))
