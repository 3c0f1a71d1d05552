"""Build reference/assets/tiny_tokenizer.json: a tiny byte-level BPE tokenizer (HF `tokenizers` format).

- ids 0..255: the 256 byte-level symbols (GPT-2 `bytes_to_unicode` alphabet), id = byte value;
- ids 256..499: 244 merges learned from the small English corpus embedded below, by a plain
  deterministic BPE (most frequent adjacent pair; ties -> lexicographically smallest pair);
- ids 500..506: the special tokens (added tokens, recognised inside text).

Run: python reference/make_tokenizer.py           (deterministic; rewrites the asset byte for byte)
     python reference/make_tokenizer.py --check   (only compares with the committed asset)
"""
import collections
import json
import os
import sys

from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "assets", "tiny_tokenizer.json")

SPECIALS = [
    ("<|endoftext|>", 500),
    ("<|im_start|>", 501),
    ("<|im_end|>", 502),
    ("<|vision_start|>", 503),
    ("<|vision_end|>", 504),
    ("<|image_pad|>", 505),
    ("<|video_pad|>", 506),
]
NUM_BPE = 500  # ids 0..499 are byte symbols + merges

CORPUS = """
You are a helpful assistant. You are a helpful assistant that generates high-quality images based on user instructions.
system user assistant image images picture photo photograph painting drawing render scene
A red cube on a blue floor. A green sphere next to a yellow cone. A small cat sitting on a wooden table.
A photo of a dog running in the park on a sunny day. The sky is blue and the grass is green.
What is in this picture? Describe the image in one sentence. What color is the cube? The cube is red.
Please draw a house with a red roof and a white door. There are two trees in front of the house.
The quick brown fox jumps over the lazy dog. The lazy dog sleeps under the tree in the garden.
A portrait of a woman with long black hair, wearing a white dress, standing by the window.
A city street at night with bright lights, tall buildings and people walking in the rain.
An old man reading a book in a quiet library. A young girl playing with a ball on the beach.
A bowl of fresh fruit: apples, oranges, bananas and grapes on a kitchen table.
The mountain is covered with snow, and the lake below reflects the clear morning light.
Hello! How are you today? I am fine, thank you. Can you help me with this question?
Write a short story about a robot that learns to paint. The robot paints the sea and the sun.
high quality, detailed, realistic, beautiful, colorful, bright, dark, soft light, sharp focus.
Make the background white. Change the color of the car to black. Remove the person on the left.
Add a hat to the man. Replace the sky with a sunset. Turn the photo into a watercolor painting.
There is a red ball, a blue box and a green bottle on the floor of the room.
One two three four five six seven eight nine ten. 0 1 2 3 4 5 6 7 8 9 10 100 1024 2026
The model reads the text, looks at the image, and answers the question with a few words.
"""


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def learn_merges(num_merges):
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    words = collections.Counter()
    for line in CORPUS.strip().split("\n"):
        for w, _ in pre.pre_tokenize_str(line + "\n"):
            words[w] += 1
    # each word as a tuple of symbols
    seqs = {w: list(w) for w in words}
    merges = []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for w, c in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += c
        if not pairs:
            raise SystemExit("corpus too small for the requested number of merges")
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        a, b = best
        for w in words:
            s = seqs[w]
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


def build():
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = learn_merges(NUM_BPE - 256)
    for a, b in merges:
        tok = a + b
        assert tok not in vocab, tok
        vocab[tok] = len(vocab)
    assert len(vocab) == NUM_BPE
    tok = Tokenizer(BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    data = json.loads(tok.to_str())
    data["added_tokens"] = [
        {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for s, i in SPECIALS
    ]
    # sanity: reload and check
    t2 = Tokenizer.from_str(json.dumps(data))
    for s, i in SPECIALS:
        assert t2.token_to_id(s) == i, (s, t2.token_to_id(s))
    enc = t2.encode("<|im_start|>user\nA red cube on a blue floor<|im_end|>\n", add_special_tokens=False)
    assert enc.ids[0] == 501 and 502 in enc.ids and max(enc.ids) < 512, enc.ids
    assert t2.decode(enc.ids, skip_special_tokens=False) == "<|im_start|>user\nA red cube on a blue floor<|im_end|>\n"
    t3 = t2.encode("héllo wörld ✓ 123", add_special_tokens=False)
    assert t2.decode(t3.ids) == "héllo wörld ✓ 123"
    return data


def main():
    data = build()
    text = json.dumps(data, ensure_ascii=False, indent=None, separators=(",", ":"))
    if "--check" in sys.argv[1:]:
        with open(OUT, encoding="utf-8") as f:
            same = f.read() == text + "\n"
        print(f"{OUT}: " + ("reproducible" if same else "DIFFERS from what this tokenizers version builds (left as is)"))
        return 0
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    sys.exit(main())
