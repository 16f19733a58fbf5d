"""Framework-free data pipeline shared by the torch and JAX backends (numpy batches, Pillow, spaCy).

pipeline.py        train_batches(...) -> per-rank batch dicts; DataStats (entry point for backends)
webdataset_io.py   shard lists / brace patterns, tar header index, random-access reads, shard writer
batch_job.py       one batch of raw samples -> arrays (runs in the decoding worker processes)
decode.py          draft-mode JPEG decoding, random resized crop, colour jitter, CLIP normalisation
text_reduction.py  the syntax reduction's part-of-speech priorities (the reductions: clipa/reductions.py)
tokenizer.py       CLIP BPE (open_clip's SimpleTokenizer, loaded without the open_clip model code)
syntax_prep.py     spaCy POS priorities; ``python -m clipa.backends.data.syntax_prep IN OUT``
zeroshot.py        val/CLASS/*.jpg + class names + templates; top-1 helpers
demo_data.py       the generated demo dataset; ``python -m clipa.backends.data.demo_data OUT``
resolve.py         a recipe's dataset paths checked (one-line errors); demo data generated on first use
"""
