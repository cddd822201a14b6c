"""The autoscaler: one decision loop per cluster that sizes the prefill and decode pools
together from their own load and the speeds their workers show, and acts through an
actuator (a dry run that only prints, Ray actors, or a KubeRay cluster's worker groups).

    signals.py   registry readings -> each pool's load, the workers' speeds since last time
    capacity.py  what one worker can do, learned online
    sizing.py    the fewest (prefill, decode) workers that meet the TTFT and ITL targets
    arrival_rate.py, forecast.py   requests/s at the routers, and what they will need
    needs.py     one tick's sizing: the larger of the load of now and the forecast
    pacing.py    windows, cooldowns, step bounds and hysteresis per pool
    loop.py      the tick that ties them to an actuator; metrics.py what it exports
    ray_actuator.py, kuberay_actuator.py   the actuators; cli.py the flags and commands
"""
