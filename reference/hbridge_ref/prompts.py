"""Prompt templates (DESIGN.md 6), tokenization and M-RoPE position triples of text-only contexts."""
import os

import torch
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER_PATH = os.path.join(HERE, "..", "assets", "tiny_tokenizer.json")

CHAT_TEMPLATE = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                 "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n")
GEN_TEMPLATE = ("<|im_start|>system\nYou are a helpful assistant that generates high-quality images based on user "
                "instructions.<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n")


def load_tokenizer(path=TOKENIZER_PATH):
    return Tokenizer.from_file(path)


def encode(tok, text):
    return torch.tensor(tok.encode(text, add_special_tokens=False).ids, dtype=torch.long)


def chat_ids(tok, content):
    return encode(tok, CHAT_TEMPLATE.format(content=content))


def gen_ids(tok, prompt):
    return encode(tok, GEN_TEMPLATE.format(prompt=prompt))


def text_positions(n, start=0):
    """[3, n]: text token at index p -> (p, p, p)."""
    p = torch.arange(start, start + n, dtype=torch.long)
    return torch.stack([p, p, p], dim=0)
