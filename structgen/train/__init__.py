"""The TreeVAE's training: the growth schedule and its phases; they talk to a Context, never to Ray."""
