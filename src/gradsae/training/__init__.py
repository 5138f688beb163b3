"""SAE training: ``cache`` (activations and ∇ₓL on disk) → ``train`` (a grid of SAEs) → ``evals``.

Modules: ``stream`` (tokens from a corpus through the model, or from a cache; the shuffle buffer),
``grid`` (the SAEs of a run and the math of one step), ``e2e`` (the end-to-end KL loss), ``state``
(checkpoints), ``train`` (the loop and the command), ``cache`` and ``evals`` (their commands).
"""
