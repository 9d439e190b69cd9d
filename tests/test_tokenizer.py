"""The hub-free CLIP tokenizer builder: every listed word is one token; anything else still tokenizes."""

from transformers import CLIPTokenizer

from stylecraft.tokenizer import write_clip_tokenizer
from stylecraft.world import vocabulary


def test_every_word_is_one_token(tmp_path):
    words = vocabulary() + ["checkerboard", "triangle", "square", "watercolor", "house"]
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path, words), local_files_only=True)
    for word in words:
        ids = tokenizer(word).input_ids
        assert len(ids) == 3, (word, tokenizer.convert_ids_to_tokens(ids))  # bos, the word, eos
    assert tokenizer.bos_token_id != tokenizer.eos_token_id == tokenizer.pad_token_id
    unknown = tokenizer("zebra!").input_ids
    assert len(unknown) > 3 and tokenizer.decode(unknown, skip_special_tokens=True).startswith("zebra")
