"""A job's report: the HTML document (:mod:`service.report.render`) and its plots
(:mod:`service.report.plots`)."""
