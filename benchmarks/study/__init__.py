"""The accuracy study behind ``benchmarks/ablation.py`` (its command line), in modules named for
what they hold: ``design`` (settings, seeds, candidates, criteria), ``stats`` (t-intervals,
p-values, Holm's correction), ``runs`` (training runs, kept and resumed, with their provenance),
``phases`` (calibration, selection, noise, the paired summary) and ``report`` (the README section
and the plots). Dependencies run one way: design, stats <- runs <- phases <- report <- ablation.py."""
