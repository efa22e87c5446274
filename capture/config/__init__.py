"""The configuration: the sysconfig file syntax (:mod:`.sysconfig`), the typed
KDUMP_* options (:mod:`.options`) and KDUMP_SAVEDIR target URLs
(:mod:`.targeturl`).  Used on both sides; imports nothing but :mod:`capture.errors`
and the scheme table of :mod:`transports.schemes`."""
