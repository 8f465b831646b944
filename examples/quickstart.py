"""The embedded SmolLM2-135M-Instruct answers questions and scores itself, then scores given answers."""

from semgrad_guard import SemGradScorer

QA_PROMPT = "Please directly answer the following question with one or few words:\n{}"  # the paper's prompt

# The embedded default model; calibration="auto" (the default) loads the bundle shipped for it
# (docs/calibration.md). Any Hugging Face causal LM id, folder or .gguf works too (then fit a calibration of
# its own with `semgrad-guard calibrate`).
scorer = SemGradScorer()
# That bundle has no threshold of its own (on a 135M model no risk level meets an error target), so decide on
# the calibrated risk: 0.849 is the median risk of the model's benchmark answers (docs/calibration.md),
# accepting about half of them; a working point, not a guarantee.
MAX_RISK = 0.849

print("1. Self-scoring: the model answers, then scores its own tokens (one forward + one backward).")
for question in [
    "What is the capital of France?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water at sea level in Celsius?",
]:
    generated = scorer.generate_and_score(QA_PROMPT.format(question), max_new_tokens=24)
    s = generated.score
    print(f"  {question:<60} -> {generated.text!r:<40} semgrad={s.semgrad:.2e} risk={s.risk:.3f}")

print("\n2. Proxy scoring: answers from anywhere (another model, a person), scored by the local model.")
pairs = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of France?", "Marseille"),
    ("Which gas do plants take in for photosynthesis?", "Carbon dioxide"),
    ("Which gas do plants take in for photosynthesis?", "Helium"),
]
for (question, answer), s in zip(
    pairs, scorer.score_batch([(QA_PROMPT.format(q), a) for q, a in pairs]), strict=True
):
    flag = "LOW CONFIDENCE" if s.risk > MAX_RISK else "accepted"
    print(f"  {question:<60} {answer!r:<18} semgrad={s.semgrad:.2e} risk={s.risk:.3f} {flag}")

print(
    "\nHigher = more likely wrong. Raw values are model-specific. A 135M model knows little, and on it "
    "SemGrad carries little signal beyond token entropy: the paper's gains are on 4B-12B models "
    "(see docs/method.md)."
)
