"""hbridge_ref: the PyTorch (f32, CPU) reference of hbridge (see docs/DESIGN.md sections 2-5).

- und.py      understanding expert: HF transformers' own Qwen2.5-VL modules, with traces (hs, K/V, logits)
- gen.py      generation expert (OmniGen2 DiT), bridge and SRT tokens, in plain PyTorch from the spec
- sampler.py  schedule (dynamic shift), Euler, guidance over a batch of branches
- vae.py      AutoencoderKL decoder/encoder in plain PyTorch from the config
- prompts.py  chat / image-generation templates, tokenizer, M-RoPE position triples
- checkpoint.py  random tiny checkpoints in the DESIGN.md section 6 layout, and loading them back
"""
