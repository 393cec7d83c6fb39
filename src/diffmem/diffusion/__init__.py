"""The diffusion model: the noise process, the U-Net, the one sampler, training, and reading a
user's diffusers folder."""
