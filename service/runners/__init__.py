"""Background loops: trial workers (:mod:`service.runners.worker`), the API's lease sweeper
(:mod:`service.runners.sweeper`), and the supervisor behind ``optpilot serve``
(:mod:`service.runners.supervisor`), on one loop base (:mod:`service.runners.loop`)."""
