import torch

from mmcompress.data.captions import AMBIGUOUS, SPECIFIC, caption_vocabulary, make_caption_dataset
from mmcompress.data.fashion_mnist import load_fashion_mnist
from mmcompress.data.tokenizer import WordTokenizer


def test_every_caption_fits_its_image_and_ambiguity_rate_is_about_30_percent():
    ds = make_caption_dataset(load_fashion_mnist("test"), seed=2)
    fits = ds.caption_classes[ds.caption_ids, ds.labels]
    assert bool(fits.all())
    assert 0.25 < float(ds.sample_ambiguous().float().mean()) < 0.35


def test_captions_are_deterministic_and_varied():
    base = load_fashion_mnist("test")
    a, b = make_caption_dataset(base, seed=2), make_caption_dataset(base, seed=2)
    assert torch.equal(a.caption_ids, b.caption_ids)
    assert len(torch.unique(a.caption_ids)) > 250
    assert not torch.equal(a.caption_ids, make_caption_dataset(base, seed=3).caption_ids)


def test_ambiguous_phrasings_fit_several_similar_classes():
    assert all(len(classes) >= 2 for classes in AMBIGUOUS.values())
    assert all(len(p) >= 3 for p in SPECIFIC.values())
    ambiguous = [c for c in caption_vocabulary() if c[2]]
    assert all(len(c[1]) >= 2 for c in ambiguous)


def test_word_tokenizer_pads_masks_and_maps_unknown_words():
    tok = WordTokenizer.from_corpus(["a photo of a coat"])
    enc = tok(["a coat", "a zebra"], max_length=5)
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    assert enc["input_ids"][1, 2] == tok.index["[UNK]"]
