"""The JAX/Flax backend (``clipa-run --backend jax``): the PyTorch backend's model and recipe on TPUs/GPUs/CPU.

    model.py       Flax (linen) CLIPA towers, identical to backends/torch/model.py
    trainer.py     loss over the global batch, optax AdamW, the jitted step; JaxTrainer for backends/loop.py
    sharding.py    Mesh (data, fsdp), batch/param shardings, jax.distributed for several hosts
    checkpoint.py  orbax checkpoints;  convert.py  torch state_dict <-> Flax params
    evaluate.py    zero-shot top-1;   launch.py   TPU-pod (gcloud) and per-host commands
    backend.py     JaxBackend.launch (the Backend protocol of backends/base.py)
"""
