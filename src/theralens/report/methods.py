"""The auto-written methods paragraph: states exactly the options a study result used
(design, change score, process scoring, caseload weighting, moderators, estimation, tests,
decomposition, software), so it can go into a paper as written.
"""

from __future__ import annotations

from typing import Any

from theralens.report.formatting import esc

__all__ = ["REFERENCES", "methods_paragraphs", "tests_sentence"]

REFERENCES = [
    "Bates, D., M\u00e4chler, M., Bolker, B., & Walker, S. (2015). Fitting linear mixed-effects models using lme4. "
    "<em>Journal of Statistical Software, 67</em>(1), 1\u201348. doi:10.18637/jss.v067.i01",
    "Coyne, A. E., Constantino, M. J., Boswell, J. F., & Kraus, D. R. (2022). Therapist-level moderation of within- "
    "and between-therapist process-outcome associations. <em>Journal of Consulting and Clinical Psychology, 90</em>"
    "(1), 75\u201389. doi:10.1037/ccp0000676",
    "Efron, B., & Tibshirani, R. J. (1993). <em>An introduction to the bootstrap</em>. Chapman & Hall/CRC. "
    "doi:10.1201/9780429246593",
    "Halekoh, U., & H\u00f8jsgaard, S. (2014). A Kenward-Roger approximation and parametric bootstrap methods for "
    "tests in linear mixed models \u2013 the R package pbkrtest. <em>Journal of Statistical Software, 59</em>(9), "
    "1\u201332. doi:10.18637/jss.v059.i09",
    "Kenward, M. G., & Roger, J. H. (1997). Small sample inference for fixed effects from restricted maximum "
    "likelihood. <em>Biometrics, 53</em>(3), 983\u2013997. doi:10.2307/2533558",
    "Kuznetsova, A., Brockhoff, P. B., & Christensen, R. H. B. (2017). lmerTest package: Tests in linear mixed effects "
    "models. <em>Journal of Statistical Software, 82</em>(13), 1\u201326. doi:10.18637/jss.v082.i13",
    "L\u00fcdtke, O., Marsh, H. W., Robitzsch, A., Trautwein, U., Asparouhov, T., & Muth\u00e9n, B. (2008). "
    "The multilevel latent covariate model. <em>Psychological Methods, 13</em>(3), 203\u2013229. doi:10.1037/a0012869",
    "Mathieu, J. E., Aguinis, H., Culpepper, S. A., & Chen, G. (2012). Understanding and estimating the power to "
    "detect cross-level interaction effects in multilevel modeling. <em>Journal of Applied Psychology, 97</em>(5), "
    "951\u2013966. doi:10.1037/a0028380",
    "Okabe, M., & Ito, K. (2008). <em>Color universal design (CUD): How to make figures and presentations that are "
    "friendly to colorblind people</em>.",
    "Quenouille, M. H. (1956). Notes on bias in estimation. <em>Biometrika, 43</em>(3\u20134), 353\u2013360. "
    "doi:10.1093/biomet/43.3-4.353",
    "Satterthwaite, F. E. (1946). An approximate distribution of estimates of variance components. "
    "<em>Biometrics Bulletin, 2</em>(6), 110\u2013114. doi:10.2307/3002019",
    "Self, S. G., & Liang, K.-Y. (1987). Asymptotic properties of maximum likelihood estimators and likelihood ratio "
    "tests under nonstandard conditions. <em>Journal of the American Statistical Association, 82</em>(398), "
    "605\u2013610. doi:10.1080/01621459.1987.10478472",
    "Stram, D. O., & Lee, J. W. (1994). Variance components testing in the longitudinal mixed effects model. "
    "<em>Biometrics, 50</em>(4), 1171\u20131177. doi:10.2307/2533455",
]


#: how the fixed effects were tested, per ``[inference] ddf`` (results.json ``inference``)
_TESTS = {
    "satterthwaite": "fixed effects were tested with t-tests using Satterthwaite's (1946) degrees of freedom, as in "
                     "lmerTest (Kuznetsova et al., 2017), with 95% confidence intervals from the same t distribution",
    "kenward-roger": "fixed effects were tested with t-tests using the Kenward-Roger adjusted covariance of the fixed "
                     "effects and its degrees of freedom (Kenward & Roger, 1997), as in pbkrtest (Halekoh & "
                     "H\u00f8jsgaard, 2014) and lmerTest's ddf = \"Kenward-Roger\" (Kuznetsova et al., 2017), with "
                     "95% confidence intervals from the same t distribution",
    "residual": "fixed effects were tested with t-tests on the residual degrees of freedom (the number of "
                "observations minus the number of fixed effects), with 95% confidence intervals from the same t "
                "distribution",
    "asymptotic": "fixed effects were tested with Wald z-tests (normal reference distribution, as lme4 without "
                  "lmerTest), with 95% confidence intervals from the normal distribution",
}


def tests_sentence(doc: dict[str, Any]) -> str:
    """How the fixed effects were tested, with the degrees of freedom named (a results.json from
    before ``inference`` was recorded used Satterthwaite's)."""
    inf = doc.get("inference") or {"ddf": "satterthwaite", "reference": "Satterthwaite (Kuznetsova et al., 2017)"}
    return f"{_TESTS[inf['ddf']]}. Degrees of freedom: {esc(inf['reference'])}"


def _latent_methods(doc: dict[str, Any]) -> str:
    """The sentences on the decomposition used, and why (docs/latent.md)."""
    decomposition = doc.get("decomposition", "manifest")
    if decomposition == "manifest" or "latent" not in doc:
        return ("No latent (multilevel SEM) correction was applied, so between-therapist and cross-level effects may "
                "be biased toward zero when caseload means are unreliable (L\u00fcdtke et al., 2008); the reliability "
                "of the therapist means is reported.")
    lat = doc["latent"]
    main = next((f for f in lat.get("fits", []) if f.get("role") == "main"), {})
    if lat.get("estimator") == "ml":
        how = ("by full-information maximum likelihood, integrating the latent caseload means and patient deviations "
               "in closed form and the therapist random slopes by adaptive Gauss-Hermite quadrature "
               f"({main.get('nodes', '?')} points per slope; Rockwood, 2020), "
               + ("bias-corrected by the delete-one-therapist jackknife (Quenouille, 1956; Efron & Tibshirani, 1993), "
                  "with jackknife standard errors and t intervals on J \u2212 1 degrees of freedom (J therapists)"
                  if lat.get("bias_correction") == "jackknife" else "with Wald confidence intervals"))
    else:
        how = (f"by Bayesian estimation (NUTS, {main.get('chains', '?')} chains of {main.get('draws', '?')} draws; "
               "latent patient and therapist means; Asparouhov & Muth\u00e9n, 2019), with 95% posterior intervals")
    role = ("All between-type effects are reported from this latent model" if decomposition == "latent" else
            "The between-type effects are reported under both decompositions, side by side")
    return (f"Because observed caseload means of a few patients are unreliable and attenuate between-therapist and "
            f"cross-level effects (L\u00fcdtke et al., 2008), each therapist's caseload mean of every process was also "
            f"modelled as a latent variable (multilevel structural equation model, as Coyne et al., 2022), estimated "
            f"{how}. {role}; the within \u00d7 between interaction was estimated with observed means only.")


def _list(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def methods_paragraphs(doc: dict[str, Any], processes: list[str], moderators: list[str],
                       min_caseload: int, draws: int, seed: int) -> list[str]:
    """Paragraphs (HTML, data values escaped) describing exactly what was done.

    ``doc`` is the ``results.json`` document (software versions included: those of the
    analysis); ``processes`` and ``moderators`` the names as the user gave them."""
    opt = doc["options"]
    design = opt["design"]
    cols = opt["columns"]
    n = doc["n"]
    procs = _list([f"<em>{esc(p)}</em>" for p in processes])
    worse = cols.get("higher_outcome_is", "worse") == "worse"
    direction = ("Higher outcome scores mean more impairment, so a negative coefficient means more improvement."
                 if worse else "Higher outcome scores mean better functioning, so a positive coefficient means more "
                               "improvement.")
    k = int(design.get("process_sessions", 0) or 0)
    scoring = ("the mean of all of the patient's ratings" if k == 0
               else f"the mean of the patient's first {k} rating{'s' if k != 1 else ''}")
    weighting = ("each patient weighing once" if design.get("caseload_weighting") == "patient"
                 else "each rating weighing once (session weighting)")
    covs = [esc(c) for c in cols.get("covariates", [])]
    cov_text = f" Patient covariates: {_list(covs)} (value at the first assessment)." if covs else ""
    excl = sum(int(e.get("patients_removed", 0)) for e in n.get("exclusions", []))
    paras = []
    data = (f"The analysis included {n['therapists']} therapists, {n['patients']} patients and {n['assessments']} "
            f"assessments after exclusions ({excl} patient{'s' if excl != 1 else ''} removed; reasons in the data "
            f"section). The process{'es' if len(processes) != 1 else ''} {procs} "
            f"{'were' if len(processes) != 1 else 'was'} modelled jointly. {direction}{cov_text}")
    paras.append(data)
    if doc["design"] == "patient":
        change = {
            "residualized": "residualized change (the patient's final outcome score, with the baseline score as a "
                            "covariate)",
            "slope": "the patient's ordinary least-squares slope of the outcome over time",
            "post_minus_pre": "post minus pre (final minus baseline outcome score)",
        }.get(design.get("change"), esc(design.get("change")))
        paras.append(
            "We used the patient-level design of Coyne et al. (2022). The outcome of each patient was "
            f"{change}. Each patient's process score was {scoring}. Following the observed (manifest) decomposition, "
            "each process score was split into a within-therapist component (the patient's score minus the "
            "therapist's caseload mean) and a between-therapist component (the caseload mean minus the mean of all "
            f"therapists' caseload means), with caseload means computed over patients, {weighting}. "
            + _latent_methods(doc))
        model = ("Aims 1 and 2 were estimated in one linear mixed model with the within- and between-therapist "
                 "components of every process as fixed effects, a random intercept for therapists and therapist-level "
                 "random slopes for the within-therapist component of every process (unstructured covariance).")
    else:
        paras.append(
            "We used a session-level (lagged) design: the outcome at each assessment was predicted from the "
            "outcome at the previous assessment, time, and the process rated at the previous assessment, split "
            "(observed decomposition) into a within-patient component (rating minus the patient's mean), a "
            "between-patient, within-therapist component (patient mean minus the therapist's caseload mean) and a "
            f"between-therapist component (caseload mean minus the mean of all caseload means), {weighting}. "
            + _latent_methods(doc))
        model = ("Aims 1 and 2 were estimated in one linear mixed model with all components of every process as "
                 "fixed effects, a random intercept for therapists, therapist-level random slopes for the "
                 "within-patient component of every process (unstructured covariance), and a random intercept for "
                 "patients nested in therapists.")
    joint = opt.get("therapist_moderators", {}).get("joint", False)
    if moderators:
        mods = _list([f"<em>{esc(m)}</em>" for m in moderators])
        mod_text = (f" For aim 3, the therapist characteristics {mods} were centred at their mean over therapists and "
                    "entered " + ("together in one model" if joint else "one at a time") + ", each as a main effect "
                    "and in interaction with the within component (cross-level moderation of the within slope) and "
                    "the between-therapist component (moderation of the between-therapist association) of every "
                    "process.")
    else:
        mod_text = " No therapist characteristics were given, so aim 3 was not estimated."
    paras.append(
        f"{model} Models were fitted by restricted maximum likelihood (REML) with theralens' nested mixed-model "
        f"engine (the lme4 formulation; Bates et al., 2015); {tests_sentence(doc)}. For aim 2, each "
        "therapist-level slope variance was tested by a REML "
        "likelihood-ratio test against the model without that random slope (same fixed effects), referred to the "
        "chi-bar-square mixture of chi-square distributions that applies to a variance on the boundary of its "
        "parameter space (Self & Liang, 1987; Stram & Lee, 1994); its 95% interval is the profile-likelihood "
        "interval of the slope standard deviation (the ML profile, as lme4's confint), whose upper bound is the "
        "one-sided 95% bound when the interval reaches 0."
        f"{mod_text} The ancillary analysis added the "
        "product of the within and between-therapist components of every process (a within \u00d7 between "
        "interaction) to the main model.")
    paras.append(
        "Therapist-specific slopes are the fixed slope plus the therapist's conditional mode (empirical Bayes "
        "estimate) with its conditional standard deviation; the probability that a therapist's slope is stronger "
        "than average is the normal probability of the conditional mode's sign in the benefit direction. Ranks "
        f"among therapists and their 95% intervals come from {draws} joint draws of the therapists' conditional "
        f"distributions (seed {seed}). Profiles classify a slope as a strength or growth area only when its whole "
        "95% interval lies on one side of the average, and call therapists with fewer than "
        f"{min_caseload} analysed patients too uncertain to interpret.")
    v = doc["software"]["versions"]
    soft = ", ".join(f"{esc(k)} {esc(x)}" for k, x in v.items() if k != "theralens")
    paras.append(f"Software: theralens {esc(v.get('theralens', doc['software']['theralens']))} "
                 f"({soft}); figures with the Okabe-Ito colour-blind-safe palette (Okabe & Ito, 2008).")
    return paras
