"""Train AlexNet from scratch, or fine-tune a pretrained network layer by layer."""
