"""The decisions page of ``upres auto`` (``RUN/report.html``): every phase and decision with its
numbers, the time line, and each arm's validation curve beside bicubic; one self-contained file
(plots inline), readable on a phone."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from upres.io.files import atomic_write_bytes, read_jsonl

STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1em;max-width:1000px;color:#222}
h1{font-size:1.5em}
h2{font-size:1.2em;border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}
th,td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
.wrap{overflow-x:auto}.keep{color:#060;font-weight:bold}.drop{color:#a00}
.best{background:#e6f4e6;font-weight:bold}img{max-width:100%;height:auto}
.summary{background:#f5f7fa;border:1px solid #dde;padding:.6em 1em;border-radius:6px}
"""


def _esc(value) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list], best: int | None = None) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        f"<tr{' class=best' if i == best else ''}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
        for i, row in enumerate(rows))
    return f"<div class=wrap><table><tr>{head}</tr>{body}</table></div>"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def validation_points(records: list[dict], psnr0: float | None = None) -> list[tuple[float, float]]:
    """(training minutes, validation PSNR) of an arm's metrics, its minutes summed across the
    rounds: each round resumes in a new session whose ``train_seconds`` start again at 0 (a
    session ends with its ``phase_seconds``; a killed one is seen by its clock going back).
    The start's step-0 score (``psnr0``, on the same pairs) is the curve's first point: an arm
    that trained only in the final validated once, a lone dot without it."""
    points, offset, last = [] if psnr0 is None else [(0.0, psnr0)], 0.0, 0.0
    for r in records:
        if "phase_seconds" in r:
            offset, last = offset + last, 0.0
        elif "val_psnr" in r:
            seconds = r.get("train_seconds", 0.0)
            if seconds < last:
                offset += last
            last = seconds
            points.append(((offset + seconds) / 60, r["val_psnr"]))
    return points


def _curves(record: dict, out: Path) -> str:
    """Validation PSNR against training minutes for every arm, bicubic as a line."""
    probes = record["phases"].get("probes", {})
    if probes.get("untrained") or not probes.get("arms"):
        return "<p>No arm trained.</p>"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for arm in probes["arms"]:
        metrics = out / "arms" / arm["name"] / "metrics.jsonl"
        points = validation_points(read_jsonl(metrics) if metrics.exists() else [], arm.get("psnr0"))
        if len(points) > 1:
            ax.plot(*zip(*points), marker="o", label=arm["name"])
    bicubic = record["phases"].get("candidates", {}).get("bicubic_psnr")
    if bicubic is not None:
        ax.axhline(bicubic, color="k", ls="--", lw=1, label=f"bicubic {bicubic:.2f} dB")
    ax.set_xlabel("training minutes (each arm's own, rounds in sequence)")
    ax.set_ylabel("validation PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _timeline(record: dict) -> str:
    import matplotlib.pyplot as plt

    phases = [(name, p.get("began"), p["seconds"]) for name, p in record["phases"].items()
              if isinstance(p, dict) and p.get("seconds")]
    if not phases:
        return ""
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.3 * len(phases)))
    start = 0.0
    for name, began, seconds in phases:  # where it began (older records: after the last)
        start = began if began is not None else start
        ax.barh(name, seconds / 60, left=start / 60)
        start += seconds
    ax.axvline(record["options"]["budget"] / 60, color="tab:red", ls="--", label="budget")
    ax.invert_yaxis()
    ax.set_xlabel("minutes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _kept(lever: dict) -> str:
    mark = "<span class=keep>kept</span>" if lever.get("keep") else "<span class=drop>dropped</span>"
    why = lever.get("why") or (f"on recipe groups {', '.join(map(str, lever['enabled_groups']))}"
                               if lever.get("enabled_groups") else "")
    return f"{mark} ({_esc(why)})" if why and why != "kept" else mark


def _sections(record: dict) -> list[str]:
    p = record["phases"]
    parts = []
    check, fp = p.get("check", {}), p.get("fingerprint", {})
    parts.append(f"<h2>Data</h2><p>{check.get('train_pairs')} training pairs (x{check.get('scale')}), "
                 f"{check.get('test_images')} test images ({check.get('test_megapixels')} MP). "
                 f"Fingerprint: {fp.get('groups')} recipe groups of sizes {fp.get('sizes')}; blind "
                 f"classifier {_pct(fp.get('classifier_accuracy'))} cross-validated beside "
                 f"{_pct(fp.get('classifier_chance'))} chance (<a href='fingerprint/fingerprint.html'>"
                 "the fingerprint page</a>). Validation: "
                 f"{p.get('split', {}).get('count')} pairs ({_esc(p.get('split', {}).get('from'))}), "
                 f"{p.get('candidates', {}).get('val_used')} used per validation.</p>")
    cands = p.get("candidates", {})
    rows = [[_esc(c["name"]), _esc(c["arch"]), f"{(c.get('params') or 0) / 1e6:.2f}",
             ("from scratch" if c.get("preset") else "not scored" if c.get("unscored") else "")
             if c.get("psnr0") is None else f"{c['psnr0']:.3f}",
             "" if c.get("seconds_per_mp") is None else f"{c['seconds_per_mp']:.0f}"
             + (" (one pair)" if c.get("unscored") else "")]
            for c in cands.get("candidates", [])]
    parts.append("<h2>Starts at step 0</h2>" + _table(
        ["start", "arch", "params (M)", "val PSNR (dB)", "inference s/MP"], rows)
        + f"<p>bicubic: {cands.get('bicubic_psnr')} dB. Missing: {_esc(cands.get('missing') or 'none')}"
        + (f". The end's precision, backend and test costs measured on <b>{_esc(ref)}</b>"
           if (ref := cands.get("reference")) else "")
        + (f". Precision of the end: <b>{_esc(precision['dtype'])}</b> ({_esc(precision['why'])}"
           + ("; fp32 for families that do not run in it" if precision["dtype"] != "fp32" else "") + ")"
           if (precision := cands.get("precision")) else "")
        + (f". Backend of the end: <b>{_esc(backend['backend'])}</b> ({_esc(backend['why'])}"
           + (f"; conversion {backend['convert_seconds']:.0f} s a model" if "convert_seconds" in backend
              else "") + (f"; {_esc(backend['int8']['why'])}" if backend.get("int8") else "")
           + ")" if (backend := cands.get("end_backend")) else "") + "</p>"
        + _zero_shot(cands.get("zero_shot")))
    probes = p.get("probes", {})
    rows = [[_esc(a["name"]), f"{a['lr']:.2e}", a["crop"], a["batch"], f"{a['seconds_per_step']:.2f}",
             a["steps_planned"], _layout(a), _timing(a)] for a in probes.get("arms", [])
            if a["variant"] != "untrained"]
    header = ["arm", "learning rate (range test)", "crop", "batch", "s/step", "steps if it wins",
              "layout (s/step, crop 64 x batch 4)", "step time: fitted (timed crop x batch: s)"]
    parts.append("<h2>Probes</h2>" + (_table(header, rows) if rows else "")
                 + "".join(f"<p class=drop>{_esc(d['name'])}: {_esc(d['why'])}</p>"
                           for d in probes.get("dropped", []))
                 + ("<p><b>Nothing trains</b>: the best start that fits and beats bicubic "
                    "predicts as it is.</p>" if probes.get("untrained") else "")
                 + (f"<p><b>The submission is bicubic</b>: {_esc(probes['bicubic'])}.</p>"
                    if probes.get("bicubic") else ""))
    return parts + _later_sections(record)


def _zero_shot(record: dict | None) -> str:
    """The soft vote of the best starts as published: its members and score, or why none."""
    if not record:
        return ""
    if "val_psnr" not in record:
        return f"<p>No zero-shot ensemble: {_esc(record['why'])}.</p>"
    members = ", ".join(f"{_esc(n)} ({w:.2f})" for n, w in zip(record["members"], record["weights"]))
    return (f"<p>Zero-shot ensemble (no training) of {members}: {record['val_psnr']:.3f} dB on "
            f"validation, {record['gain_db']:+.3f} dB over the best of them.</p>")


def _why_won(record: dict) -> str:
    """Which start the winner came from, how it was trained (PSNR or looks), and the last
    halving round's scores that chose it."""
    from upres.io.published import PUBLISHED

    halving, p = record["phases"]["halving"], record["phases"]
    arm = next((a for a in p.get("probes", {}).get("arms", []) if a["name"] == halving["winner"]), {})
    start = arm.get("source") or arm.get("preset") or halving["winner"]
    name = short = Path(str(start)).stem if arm.get("source") else start
    published = PUBLISHED.get(short)
    kind = (f"published, trained for {published.purpose}" if published
            else "trained from scratch here" if arm.get("preset") else "trained with a GAN for looks"
            if short.startswith(("realesrgan", "realsr")) else "the user's weights")
    rounds = halving.get("rounds") or []
    last = sorted(rounds[-1]["psnr"].items(), key=lambda kv: -kv[1]) if rounds else []
    scores = ", ".join(f"{_esc(n)} {v:.3f}" for n, v in last[:3])
    return (f"<p>The winning start: <b>{_esc(name)}</b> ({kind}; step-0 validation PSNR "
            f"{arm.get('psnr0', '?')} dB)" + (f", the highest in the last halving round ({scores} dB)"
                                             if scores else ", the only arm") + ".</p>")


def _extended(final: dict) -> str:
    ext = final.get("extended") or []
    return "".join(f" Its steps ran out with {e['seconds'] / 60:.1f} min left: trained on to step "
                   f"{e['iterations']}." for e in ext)


def _timing(arm: dict) -> str:
    timing = arm.get("timing")
    if not timing:
        return "-"
    timed = ", ".join(f"{c}x{b}: {t:.2f}" for c, b, t in timing["timed"])
    return f"{timing['overhead']:.2f} s + {timing['per_pixel'] * 1e6:.2f} s/MP ({timed})"


def _layout(arm: dict) -> str:
    timed = arm.get("layout")
    if not timed:
        return "-"
    chosen = "channels_last" if arm.get("channels_last") else "NCHW"
    return f"{chosen} ({timed['nchw']:.2f} NCHW, {timed['channels_last']:.2f} channels_last)"


def _later_sections(record: dict) -> list[str]:
    p = record["phases"]
    halving = p.get("halving", {})
    parts = []
    for i, rnd in enumerate(halving.get("rounds", []), start=1):
        ranked = sorted(rnd["psnr"].items(), key=lambda kv: -kv[1])
        rows = [[_esc(n), f"{v:.3f}", "kept: began under bicubic, still unlearning"
                 if n == rnd.get("kept_unlearning") else "kept" if n in rnd["kept"] else "dropped"]
                for n, v in ranked]
        parts.append(f"<h2>Halving round {i} ({rnd['seconds'] / 60:.1f} min each)</h2>"
                     + _table(["arm", "val PSNR (dB)", ""], rows, best=0))
    if halving.get("winner") and p.get("final", {}).get("untrained"):
        parts.append(f"<p>Submission from <b>{_esc(halving['winner'])}</b> as it is: step-0 val PSNR "
                     f"{p['final']['psnr']} dB.</p>")
    elif halving.get("winner"):
        final = p.get("final", {})
        parts.append(f"<p>Winner: <b>{_esc(halving['winner'])}</b>; final training: "
                     f"{final.get('planned_seconds', 0) / 60:.1f} min, its schedule planned to step "
                     f"{final.get('iterations')} (from the {final.get('rate_from', 'measured')} speed)"
                     + (f", stopped at step {final['reached_step']}" if final.get("reached_step") else "")
                     + f", val PSNR {final.get('psnr')} dB." + _extended(final) + "</p>"
                     + _why_won(record) + _specialist(final.get("specialist"))
                     + _runner_up_final(final.get("runner_up")))
    levers, end = p.get("levers", {}), p.get("end", {})
    rows = []
    grouped = _group_weights(end.get("weights_by_group") or {})
    refine = [("refinement", end["refine"])] if end.get("refine") else []
    specialist = [("the runner-up's specialist on its groups", {
        **end["specialist"], "why": f"groups {', '.join(map(str, end['specialist']['groups']))}"})
    ] if end.get("specialist") else []
    for name, lever in [*((k, v) for k, v in levers.items() if k in ("self_ensemble", "ensemble")
                          and isinstance(v, dict)), *grouped, *specialist, *refine]:
        timed = "test_seconds" in lever
        label = f"self-ensemble x{lever['transforms']}" if lever.get("transforms") else name
        loss = lever.get("training_loss_db")
        rows.append([_esc(label), f"{lever['gain_db']:+.3f}" if "gain_db" in lever else "-",
                     f"{lever['test_seconds']:.0f}" if timed else "-",
                     f"{lever.get('db_per_minute', 0):+.3f}" if timed else "-",
                     "-" if not timed else "all of it" if loss is None else f"{loss:.3f}",
                     _kept(lever)])
        for n, option in sorted((lever.get("options") or {}).items(), key=lambda kv: int(kv[0])):
            if int(n) != lever.get("transforms"):
                rows.append([f"&nbsp;&nbsp;(x{_esc(n)})", f"{option['gain_db']:+.3f}",
                             f"{option['test_seconds']:.0f}", "", "", f"net {option['net_db']:+.3f}"
                             if option["net_db"] > -1e8 else "does not fit"])
    refined = any(levers.get(k, {}).get("refined") for k in ("self_ensemble", "ensemble")
                  if isinstance(levers.get(k), dict))
    parts.append("" if not levers else "<h2>Levers at the end (on validation)</h2>"
                 + ("<p>Self-ensemble and ensemble gains are measured after the refinement the "
                    "end keeps.</p>" if refined else "") + _table(
        ["lever", "gain (dB)", "test-time cost (s)", "dB per minute",
         "training it takes (dB)", "decision"], rows) + _slope(levers.get("training")))
    sub = p.get("submit", {})
    if sub:
        parts.append(f"<h2>Submission</h2><p>{sub['images']} images in <code>{_esc(sub['folder'])}"
                     f"</code> and <code>{_esc(sub['zip'])}</code>, predicted in "
                     f"{sub['predict_seconds']:.0f} s by {_models(end)}.</p>")
    return parts + _end_notes(end)


def _end_notes(end: dict) -> list[str]:
    """What replaced the trained end, or why the zero-shot ensemble did not."""
    parts, zero = [], end.get("zero_shot") or {}
    if zero.get("keep"):
        parts.append(f"<p><b>The submission is the zero-shot ensemble</b> of the starts as "
                     f"published ({zero['val_psnr']:.3f} dB on validation): the trained end's "
                     f"{_models(zero['instead_of'])} scored {zero['instead_of']['val_psnr']} dB.</p>")
    elif zero:
        parts.append(f"<p>The zero-shot ensemble ({zero['val_psnr']:.3f} dB) was not used: "
                     f"{_esc(zero['why'])}.</p>")
    if end.get("instead_of"):
        parts.append(f"<p><b>The submission is bicubic</b>: the end's "
                     f"{_models(end['instead_of'])} scored {end['instead_of']['val_psnr']} dB on "
                     f"validation, under bicubic's {end['bicubic_psnr']} dB.</p>")
    return parts


def _specialist(record: dict | None) -> str:
    """The final's first part: the runner-up trained on the groups it led, or why not."""
    if not record or "of" not in record:
        return ""
    groups = ", ".join(map(str, record.get("groups") or [])) or "none"
    if record.get("why"):
        return f"<p>No specialist of {_esc(record['of'])}: {_esc(record['why'])}.</p>"
    return (f"<p>Before it, <b>{_esc(record['name'])}</b>, a copy of the runner-up, trained "
            f"{record['planned_seconds'] / 60:.1f} min ({record['share']:.0%} of the final) on recipe "
            f"group(s) {groups}, where the runner-up led on validation: to step "
            f"{record.get('reached_step')}, val PSNR {record.get('psnr')} dB on those groups' pairs.</p>")


def _runner_up_final(record: dict | None) -> str:
    """The runner-up's share of the final, from both members' fitted validation curves, or why
    it had none."""
    if not record or "name" not in record:
        return f"<p>The runner-up did not train in the final: {_esc(record['why'])}.</p>" if record else ""
    curves = record.get("curves") or []
    fitted = "; ".join(f"{who} {c['slope']:.3f} dB per e-fold of steps at step {c['step']}, weight "
                       f"{c['weight']:.2f}" for who, c in zip(("winner", "runner-up"), curves))
    if not record.get("seconds"):
        return (f"<p>The runner-up {_esc(record['name'])} did not train in the final: "
                f"{_esc(record['why'])}" + (f" ({fitted})" if fitted else "") + ".</p>")
    return (f"<p>The runner-up <b>{_esc(record['name'])}</b> trained {record['seconds'] / 60:.1f} min "
            f"of the final, the share where the members' fitted validation curves ({fitted}) "
            f"predict the most for the ensemble: to step {record.get('reached_step')}, val PSNR "
            f"{record.get('psnr')} dB.</p>")


def _group_weights(record: dict) -> list[tuple[str, dict]]:
    """The ensemble weights fitted per recipe group, as a lever row (its weights in the why), and
    those of the groups validation did not see (``_unseen_weights``)."""
    if "gain_db" not in record:
        return []
    weights = "; ".join(f"group {g}: " + "/".join(f"{w:.2f}" for w in ws)
                        for g, ws in record["weights"].items())
    led = record.get("led") or []
    swapped = (f" (group{'s' * (len(led) > 1)} {', '.join(map(str, led))}, led by the runner-up, "
               "shrunk toward the pooled weights exchanged)") if led else ""
    return [("ensemble weights per recipe group", {**record, "why": f"weights {weights}{swapped}"}),
            *_unseen_weights(record.get("unseen"))]


def _unseen_weights(unseen: dict | None) -> list[tuple[str, dict]]:
    """The weights of the groups validation did not see, fitted on their training pairs."""
    if not unseen:
        return []
    fits = "; ".join(f"group {g}: " + "/".join(f"{w:.2f}" for w in unseen["weights"][str(g)]) + (
        f" ({', '.join(unseen['pairs'][str(g)])})" if unseen["pairs"][str(g)]
        else " (no training pair: the winner alone)") for g in unseen["groups"])
    return [(f"weights fitted on their training pairs for recipe group{'s' * (len(unseen['groups']) > 1)} "
             f"{', '.join(map(str, unseen['groups']))}",
             {"keep": True, "why": f"no validation pair showed them; {fits}"})]


def _slope(value: dict | None) -> str:
    """How the levers' time was priced: the winner's validation slope."""
    if not value:
        return ""
    points = value.get("points") or value.get("between")  # (runs before 4ae0a0a: the last two)
    if not points and value.get("steps_per_second") == 0:
        return "<p>Nothing trains, so a lever's time costs no training.</p>"
    if value.get("slope_db_per_log_step") is None:
        return (f"<p>The winner's validation slope was not measured; a lever could take at most "
                f"a share of the final's {value['final_seconds'] / 60:.1f} min.</p>")
    curve = ", ".join(f"{p:.3f} dB at step {s}" for s, p in points)
    return (f"<p>A lever's time is priced by the winner's validation curve: {curve}, fitted as "
            f"{value['slope_db_per_log_step']:.3f} dB per e-fold of steps, over a final of "
            f"{value['final_seconds'] / 60:.1f} min at {value['steps_per_second']:.3f} steps/s.</p>")


def _models(end: dict) -> str:
    """Each model by its arm's name (the folder above its weights file) with its weight."""
    models, weights = end.get("models") or [], end.get("weights") or []
    named = [_esc(Path(m).parent.name if Path(m).name == "best.safetensors" else Path(m).stem)
             for m in models]
    if len(named) == len(weights) and len(named) > 1:
        parts = [f"{n} ({w:.2f})" for n, w in zip(named, weights)]
        if (end.get("specialist") or {}).get("keep") and len(parts) == 3:  # pooled weight 0: per group
            groups = ", ".join(map(str, end["specialist"]["groups"]))
            parts[2] = f"{named[2]} (in {named[1]}'s place on recipe groups {groups})"
        return "a weighted ensemble of " + ", ".join(parts)
    return ", ".join(named) or "the winner"


def _pct(value) -> str:
    return "?" if value is None else f"{value:.0%}"


def write_report(record: dict, out: Path) -> Path:
    """``out/report.html`` from an ``auto.json`` record (and the arms' metrics)."""
    end = record["phases"].get("end", {})
    gain = (end.get("val_psnr", 0) - end.get("bicubic_psnr", 0)) if end else None
    summary = (f"<div class=summary><b>{end.get('val_psnr', '?')} dB</b> on validation, "
               f"{'' if gain is None else f'{gain:+.2f} dB over bicubic, '}"
               f"in {record.get('total_seconds', record['spent']) / 60:.1f} of "
               f"{record['options']['budget'] / 60:.1f} budgeted minutes"
               + (f"; {unused['seconds'] / 60:.1f} min unused: {_esc(unused['why'])}"
                  if (unused := record.get("unused")) else "") + ".</div>")
    body = ["<h1>upres auto</h1>", summary, "<h2>Time line</h2>", _timeline(record),
            "<h2>Validation curves</h2>", _curves(record, out), *_sections(record)]
    page = ("<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
            "content='width=device-width,initial-scale=1'><title>upres auto</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")
    atomic_write_bytes(out / "report.html", page.encode())
    return out / "report.html"
