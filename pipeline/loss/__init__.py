"""Loss stage: the verified VGG-16, its frozen features and the perceptual loss, as training optimizes it
and evaluation measures it.

- `vgg_weights`: the verified VGG-16 weights (fetched and converted on a fresh machine); `vgg`: the frozen
  feature extractor;
- `losses`: the perceptual loss terms (style Gram matrices, content, TV) and `build_loss`, the loss a
  trained model was trained with (used by evaluation, the Gatys baseline and the ablation).
"""
