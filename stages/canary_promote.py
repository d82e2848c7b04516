"""Champion vs challenger: replay traffic in staged steps, test, and move `champion`.

    python stages/canary_promote.py registry/registered.json metrics/canary_promote.json \\
        reports/canary.md reports/canary_evidently.html registry/promotions.jsonl

Both models are resolved through MLflow aliases, or the champion is a local model folder
(serving.champion: adapter in_process, model <folder>). With no champion yet, the
challenger must pass the rules' absolute floors. Otherwise each step of
canary_promote.steps replays that share of the traffic through the serving adapters and runs the paired tests; the
decision (Successful, Failed, Inconclusive) moves the alias, waits for approval, or keeps
the champion, and every move is appended to the git-tracked audit log.

In a DVC experiment (`dvc exp run`, queued or temporary) the analysis runs in full and the
metrics say what it would decide (`decision`, `would_promote`, `status: experiment`), but
no alias moves: aliases move only from the branch workspace or through scripts/approve.py.
"""

import logging

from spark_trainer import devices, tracking
from spark_trainer.canary import adapters, analysis, promotion, report, traffic
from spark_trainer.canary.replay import Replayer
from spark_trainer.outputs import write_metrics, write_text_atomic, write_timings
from spark_trainer.params import CanaryPromoteParams, EvaluateSafetyParams, RegisterParams, load_section
from spark_trainer.quality import toxicity
from spark_trainer.registry import model_registry
from spark_trainer.stage import Timer, entrypoint, path_args

log = logging.getLogger("canary_promote")


@entrypoint
def main() -> None:
    args = path_args(__doc__, "registered", "metrics", "report", "evidently", "audit")
    p: CanaryPromoteParams = load_section("canary_promote")
    reg: RegisterParams = load_section("register")  # type: ignore[assignment]
    name = reg.model_name
    probes: EvaluateSafetyParams = load_section("evaluate_safety")
    t = load_section("quality_gates").toxicity  # type: ignore[attr-defined]
    uri = tracking.tracking_uri(load_section("tracking"))  # type: ignore[arg-type]
    local = promotion.local_champion(p)  # checked before any compute
    device = devices.stage_device("canary_promote")  # in_process serving and Detoxify
    timer = Timer()
    items = traffic.build(p.traffic, probes)

    # In a DVC experiment the analysis runs in full, but no alias moves (what it would do is
    # recorded): the challenger is the version this workspace registered, not the alias.
    experiment = tracking.dvc_experiment()
    registered = model_registry.registered_version(uri, args.registered)  # in the store register wrote to
    if experiment:
        challenger = registered
    else:
        challenger = model_registry.resolve_alias(uri, name, model_registry.CHALLENGER)
        model_registry.check_registered(challenger, uri, args.registered)
    champion = model_registry.resolve_alias(uri, name, model_registry.CHAMPION)
    holder = champion.version if champion else None
    if champion is None:
        model_registry.check_champion_unset(uri, name, args.audit)
    champion, already = promotion.baseline(uri, name, champion, challenger)
    with timer.phase("load"):
        # Every registry version the report names is fetched and verified, whatever serves it:
        # the report states what verification proved about it, not what a tag claims.
        challenger_dir, challenger_facts = promotion.fetch_bundle(uri, challenger, reg)
        serve = {"timeout_s": p.serving.timeout_s, "device": device, "chat": probes.chat}
        served = {"challenger": adapters.build(p.serving.challenger, challenger_dir, **serve)}
        champion_facts: dict = {}
        if local is not None:
            served["champion"] = adapters.build(p.serving.champion, local, **serve)
        elif champion is not None:
            champion_dir, champion_facts = promotion.fetch_bundle(uri, champion, reg)
            served["champion"] = adapters.build(p.serving.champion, champion_dir, **serve)
        scorer = toxicity.build_scorer(t.backend, t.model_type, t.checkpoint, t.huggingface_config_path, t.fallback,
                                       t.batch_size, t.checkpoint_sha256, device)

    def score(item, reply):
        return traffic.score(item, reply, bool(toxicity.flagged(scorer.score([reply])[0], t.thresholds)), probes)

    replayer = Replayer(served, p.serving.max_new_tokens, p.analysis.consecutive_error_limit, score)
    with timer.phase("replay"):
        if "champion" not in served:
            steps = [analysis.first_champion([replayer.ask("challenger", it) for it in items], p.rules, p.analysis)]
            decision, reason = steps[0]["outcome"], steps[0]["reason"]
        else:
            decision, reason, steps = promotion.run_steps(replayer, items, p)
    if experiment:
        status = "experiment"
        log.info("DVC experiment %s: the decision is %s; aliases untouched (they move only from the branch "
                 "workspace or through scripts/approve.py)", experiment[tracking.TAG_DVC_EXP], decision)
    else:
        status = promotion.apply(uri, name, decision, reason, champion, challenger, already, p, args.audit,
                                 tracking.git_tags().get(tracking.TAG_GIT_COMMIT, "unknown"), local)

    # Wall-clock figures go to the timings file only: the metrics and the git-tracked report
    # are byte-identical across reruns of the same inputs.
    stable_steps, latency = analysis.split_volatile(steps)
    compared = champion if local is None else None
    after = challenger.version if status == "promoted" else holder  # a rerun of a promotion: the same
    metrics = {"model": name, "challenger_version": int(challenger.version), "mode": p.mode,
               "champion_version": int(compared.version) if compared else None,
               "champion_model": str(local) if local is not None else None,
               "comparison": promotion.comparison(challenger, champion, local, p.mode),
               "champion_alias_after": int(after) if after else None,
               "steps_planned": list(p.steps),
               "challenger_signed": challenger_facts["signed"], "challenger_signing": challenger_facts["signing"],
               "challenger_release_override": challenger_facts["release_override"],
               "champion_signed": champion_facts.get("signed"), "champion_signing": champion_facts.get("signing"),
               "champion_release_override": champion_facts.get("release_override"),
               "decision": decision, "status": status, "reason": reason, "steps": stable_steps,
               "would_promote": decision == "Successful",
               "toxicity_backend": scorer.backend,
               # which arms sent the probes through their model's chat template (evaluate_safety.chat)
               "chat_template": {arm: adapter.chat for arm, adapter in sorted(served.items())}}
    write_text_atomic(args.report, report.markdown(metrics, p.rules))
    with timer.phase("evidently"):
        replies = replayer.cache
        report.evidently_html(list(replies.get("champion", {}).values()), list(replies["challenger"].values()),
                              args.evidently)
    write_metrics(args.metrics, metrics)
    write_timings(args.metrics, {**timer.total(), **{f"latency.{k}.{f}": v for k, m in latency.items()
                                                     for f, v in m.items() if isinstance(v, float)}})
    tracking.mirror_stage("canary_promote", p, args.metrics, artifacts=[args.report, args.evidently])


if __name__ == "__main__":
    main()
