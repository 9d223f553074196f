from texforce.tokenizer import VOCAB_SIZE, build_clip_tokenizer


def test_matches_openai_clip_ids():
    tokenizer = build_clip_tokenizer()
    assert len(tokenizer) == VOCAB_SIZE == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_pads_to_77_with_end_token():
    ids = build_clip_tokenizer()("A photo of a hand", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407


def test_save_and_reload(tmp_path):
    from transformers import CLIPTokenizer

    build_clip_tokenizer().save_pretrained(tmp_path)
    assert (
        CLIPTokenizer.from_pretrained(tmp_path)("four wolves").input_ids
        == build_clip_tokenizer()("four wolves").input_ids
    )
