"""Loss stage: the verified VGG-16 weights, the frozen VGG feature extractor and the perceptual loss terms."""
