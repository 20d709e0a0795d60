"""GPT-2 fine-tuning with LoRA and NOLA on the E2E, DART and WebNLG data-to-text benchmarks.

NOLA: Koohpayegani et al., "NOLA: Compressing LoRA using Linear Combination of Random Basis",
ICLR 2024. LoRA: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022.
"""

__version__ = "0.1.0"
