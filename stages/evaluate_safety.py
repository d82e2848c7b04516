"""Safety probes on the candidate model: toxicity, bias, jailbreak, prompt injection.

    python stages/evaluate_safety.py models/lora/arithmetic/merged data/probes \\
        metrics/evaluate_safety.json reports/safety.md

Probe sets are versioned files in data/probes/. Toxicity of generations is scored by the
quality gates' backend (Detoxify with a checkpoint, else its configured fallback; the
metrics say which ran). Prompts go through the model's chat template when it has one
(evaluate_safety.chat). Writes per probe the pass rate against its minimum, severity,
failing and refused ids and failure examples, the critical issue count and
recommendations, as metrics and as a Markdown report. The model and Detoxify run on
`compute.device`.
"""

from spark_trainer import devices, tracking
from spark_trainer.evaluation import safety
from spark_trainer.modeling import causal_lm
from spark_trainer.modeling.tokenizer import load_pretrained
from spark_trainer.outputs import write_metrics, write_text_atomic, write_timings
from spark_trainer.params import EvaluateSafetyParams, QualityGatesParams, load_section
from spark_trainer.quality import toxicity
from spark_trainer.stage import Timer, entrypoint, path_args


@entrypoint
def main() -> None:
    args = path_args(__doc__, "model_dir", "probes", "metrics", "report")
    p: EvaluateSafetyParams = load_section("evaluate_safety")
    gates: QualityGatesParams = load_section("quality_gates")
    t = gates.toxicity  # the same backend settings as the quality gates
    device = devices.stage_device("evaluate_safety")  # the model's and the toxicity scorer's
    timer = Timer()
    toxic_prompts = safety.read_probes(args.probes / "toxicity_prompts.jsonl", ("id", "prompt"))
    pairs = safety.read_probes(args.probes / "bias_pairs.jsonl", ("id", "category", "stereotyped", "anti_stereotyped"))
    attacks = safety.read_probes(args.probes / "jailbreak.jsonl", ("id", "kind", "attack", "prompt"))
    model = causal_lm.load_for_inference(args.model_dir, produced_by="lora", device=device)
    tok = load_pretrained(str(args.model_dir))
    chat = safety.use_chat(tok, p.chat, args.model_dir)
    system = p.system_prompt.format(canary=p.canary)
    scorer = toxicity.build_scorer(t.backend, t.model_type, t.checkpoint, t.huggingface_config_path, t.fallback,
                                   t.batch_size, t.checkpoint_sha256, device)

    with timer.phase("toxicity"):
        prompts = [safety.probe_prompt(tok, system, r["prompt"], chat, r["prompt"]) for r in toxic_prompts]
        outputs = safety.generate(model, tok, prompts, p.max_new_tokens, chat)
        results = []
        for row, output, scores in zip(toxic_prompts, outputs, scorer.score(outputs), strict=True):
            hits = toxicity.flagged(scores, t.thresholds)
            results.append({"id": row["id"], "prompt": row["prompt"], "output": output, "passed": not hits,
                            "refused": safety.refused(output), "reason": f"toxic {hits}"})
    probes = {"toxicity": safety.probe_summary(results, p.severity["toxicity"], p.min_pass_rate["toxicity"],
                                               p.failure_examples)}

    with timer.phase("bias"):
        scored = safety.bias_scores(model, tok, pairs, p.bias_margin)
    probes["bias"] = safety.probe_summary(scored, p.severity["bias"], p.min_pass_rate["bias"], p.failure_examples)

    with timer.phase("attacks"):
        texts = [a["prompt"].format(injection=p.injection) for a in attacks]
        prompts = [safety.probe_prompt(tok, system, text, chat, safety.attack_prompt(system, text)) for text in texts]
        outputs = safety.generate(model, tok, prompts, p.max_new_tokens, chat)
        for kind in ("jailbreak", "prompt_injection"):
            results = []
            for a, text, output in zip(attacks, texts, outputs, strict=True):
                if a["kind"] == kind:
                    reason = safety.judge_attack(output, kind, p.canary, p.injection)
                    results.append({"id": a["id"], "attack": a["attack"], "prompt": text, "output": output,
                                    "passed": reason is None, "refused": safety.refused(output), "reason": reason})
            probes[kind] = safety.probe_summary(results, p.severity[kind], p.min_pass_rate[kind], p.failure_examples)

    metrics = {"model": str(args.model_dir), "toxicity_backend": scorer.backend,
               "toxicity_backend_note": scorer.note, "probes": probes, "bias": safety.bias(scored),
               "bias_margin": p.bias_margin, "failure_examples": p.failure_examples, "chat": p.chat,
               "chat_template": chat,
               "critical_issues": sum(v["failures"] for v in probes.values() if v["severity"] == "critical")}
    metrics["recommendations"] = safety.recommendations(metrics)
    write_text_atomic(args.report, safety.render_report(str(args.model_dir), metrics))
    write_metrics(args.metrics, metrics)
    write_timings(args.metrics, timer.total())
    tracking.mirror_stage("evaluate_safety", p, args.metrics, artifacts=[args.report])


if __name__ == "__main__":
    main()
