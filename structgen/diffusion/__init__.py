"""Diffuse-TreeVAE stage 2: a DDPM conditioned on a frozen TreeVAE (algorithm.md §5).

Layers, each usable alone: `schedule` (the noise process), `samplers` (DDPM / DDIM behind one
`set_timesteps` / `step` interface), `unet` (the network), `conditioning` + `vae_condition`
(what the network is told about the tree), `loop` (training with EMA), `modes` (the four
generation modes); what the CLI calls is `structgen/ddpm_api.py`.
"""
