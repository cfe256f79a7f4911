import pytest
import torch

from dinov3_m2f.modeling.blockwise import blockwise_slide_inference, count_window_runs
from dinov3_m2f.modeling.semantic_inference import slide_inference

NUM_CLASSES = 4


def _context_predict():
    """A 5x5 conv predictor: its scores depend on the crop borders (zero padding), as a model's do."""
    conv = torch.nn.Conv2d(3, NUM_CLASSES, 5, padding=2)
    torch.nn.init.normal_(conv.weight, generator=torch.Generator().manual_seed(0))

    def predict(images):
        with torch.no_grad():
            return conv(images).softmax(1)

    return predict


def _assemble(blocks, size):
    height, width = size
    scores = torch.full((NUM_CLASSES, height, width), float("nan"))
    order = []
    for top, left, block in blocks:
        assert torch.isnan(scores[:, top : top + block.shape[1], left : left + block.shape[2]]).all()
        scores[:, top : top + block.shape[1], left : left + block.shape[2]] = block
        order.append((top, left))
    assert order == sorted(order), "blocks must come in raster order"
    assert not torch.isnan(scores).any(), "every pixel belongs to one yielded block"
    return scores


@pytest.mark.parametrize(
    "size,crop,stride,block,slide_batch",
    [
        ((70, 95), (24, 32), (16, 20), (25, 30), 1),  # blocks do not divide the scene, stride < crop
        ((70, 95), (24, 32), (16, 20), (25, 30), 3),  # batched windows
        ((41, 130), (32, 32), (32, 21), (13, 64), 2),  # blocks smaller than the window
        ((20, 50), (32, 32), (20, 20), (64, 64), 2),  # scene shorter than the crop, one block row
    ],
)
def test_blockwise_equals_in_memory_slide(size, crop, stride, block, slide_batch):
    predict = _context_predict()
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(1))
    expected = slide_inference(predict, image[None], crop_size=crop, stride=stride,
                               num_classes=NUM_CLASSES, slide_batch=slide_batch)[0]
    reads = []

    def read_window(top, left, height, width):
        reads.append((top, left))
        return image[:, top : top + height, left : left + width]

    blocks = blockwise_slide_inference(predict, read_window, image_size=size, crop_size=crop,
                                       stride=stride, num_classes=NUM_CLASSES, block_size=block,
                                       slide_batch=slide_batch)
    scores = _assemble(blocks, size)
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(scores.argmax(0), expected.argmax(0))
    assert len(reads) == count_window_runs(*size, crop_size=crop, stride=stride, block_size=block)[1]


def test_blockwise_keeps_few_blocks_open():
    """Blocks are yielded while the scene is still being processed, not all at the end."""
    size, block = (64, 256), (32, 32)
    image = torch.rand(3, *size)
    reads_before_block = []
    reads = []

    def read_window(top, left, height, width):
        reads.append((top, left))
        return image[:, top : top + height, left : left + width]

    for _ in blockwise_slide_inference(_context_predict(), read_window, image_size=size,
                                       crop_size=(32, 32), stride=(16, 16), num_classes=NUM_CLASSES,
                                       block_size=block):
        reads_before_block.append(len(reads))
    runs = count_window_runs(*size, crop_size=(32, 32), stride=(16, 16), block_size=block)[1]
    assert len(reads_before_block) == 2 * 8 and reads_before_block[0] < runs // 4


def test_blockwise_rejects_bad_arguments():
    predict = _context_predict()
    with pytest.raises(ValueError, match="block_size"):
        list(blockwise_slide_inference(predict, None, image_size=(8, 8), crop_size=(4, 4), stride=(4, 4),
                                       num_classes=NUM_CLASSES, block_size=(0, 4)))
    with pytest.raises(ValueError, match="expected"):
        list(blockwise_slide_inference(lambda x: x, lambda t, l, h, w: torch.zeros(3, h, w),
                                       image_size=(8, 8), crop_size=(4, 4), stride=(4, 4),
                                       num_classes=NUM_CLASSES))
