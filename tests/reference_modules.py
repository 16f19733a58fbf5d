"""Independent reference towers built from an encoder's shapes: timm's VisionTransformer (configured as
CLIPA's image tower: global average pool, no class token) and open_clip's TextTransformer. The
cost-model tests count FLOPs, parameters and saved activations on these, not on clipa's own model."""
from open_clip.transformer import TextTransformer
from timm.models.vision_transformer import VisionTransformer


def vit(enc, image_size: int, *, head: bool = False, pos_embed: str = "learn", mask_ratio: float = 0.0):
    """``head``: the projection to ``embed_dim`` (timm's classifier); ``mask_ratio``: timm's patch drop."""
    v = enc.vision
    return VisionTransformer(img_size=image_size, patch_size=v.patch, embed_dim=v.width, depth=v.depth,
                             num_heads=v.heads, mlp_ratio=v.mlp_dim / v.width, class_token=False,
                             global_pool="avg", num_classes=enc.embed_dim if head else 0, pos_embed=pos_embed,
                             patch_drop_rate=mask_ratio)


def text(enc, context_length: int = 0):
    """``context_length``: tokens (default the tower's full context)."""
    t = enc.text
    return TextTransformer(context_length=context_length or t.max_len, vocab_size=t.vocab, width=t.width,
                           heads=t.heads, layers=t.depth, mlp_ratio=t.mlp_dim / t.width, output_dim=enc.embed_dim)
