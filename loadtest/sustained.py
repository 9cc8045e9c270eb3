"""Sustained-rate search (docs/performance.md): for each row, the baseline and then
Switchboard at each rate, 10 s each, readers in two worker processes, HTTP publishing.

usage: python3 loadtest/sustained.py '[[SUBSCRIBERS, PUBLISHERS, [RATE, ...], CHANNELS, {OPTIONS}], ...]'
OPTIONS (optional): "via": "http" (default) or "ws" (publishers are WebSocket clients);
"workers": N (server worker threads: `server.worker_threads`, `TOKIO_WORKER_THREADS` for
the baseline; default: one per core).
Binaries from $SWITCHBOARD_BIN_DIR (default target/release); one JSON line per run on stdout
and appended to $OUT (default sustained.jsonl). Run from the repository root.
"""
import json, subprocess, sys, time, os
T=os.environ.get('SWITCHBOARD_BIN_DIR','target/release')
out=open(os.environ.get('OUT','sustained.jsonl'),'a')
JSON='/tmp/sustained-run.json'
addr=[21]
def run(server, subs, pubs, rate, channels=1, opts={}):
    sf=addr[0]; addr[0]+=4
    if addr[0]>246: addr[0]=21
    via=opts.get('via','http')
    env=dict(os.environ)
    if 'workers' in opts:
        env['SWITCHBOARD_SERVER__WORKER_THREADS']=str(opts['workers'])
        env['TOKIO_WORKER_THREADS']=str(opts['workers'])
    if server=='sb':
        sp=subprocess.Popen([T+'/switchboard','--config','loadtest/switchboard.toml','--listen','127.0.0.1:18080','--control','127.0.0.1:19090','--log-level','error'],cwd='.',env=env)
        extra=[]
    else:
        sp=subprocess.Popen([T+'/switchboard-loadtest','baseline','--listen','127.0.0.1:18080','--control','127.0.0.1:19090'],cwd='.',stdout=subprocess.DEVNULL,env=env)
        extra=['--baseline']
    time.sleep(1)
    cmd=[T+'/switchboard-loadtest','fanout','--server','127.0.0.1:18080','--control','127.0.0.1:19090','--server-pid',str(sp.pid),'--subscribers',str(subs),'--rate',str(rate),'--duration','10','--source-addrs','2','--publish-via',via,'--workers','2','--source-first',str(sf),'--json',JSON]+extra
    if pubs>1: cmd+=['--publishers',str(pubs)]
    if channels>1: cmd+=['--channels',str(channels),'--random']
    r=subprocess.run(cmd,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL,timeout=180)
    sp.terminate(); sp.wait()
    try: d=json.load(open(JSON))
    except Exception as e: d={'error':str(e)}
    l=d.get('latency_us') or {}
    q=d.get('request_latency_us') or {}
    rec=dict(server=server,subs=subs,pubs=pubs,channels=channels,rate=rate,via=via,workers=opts.get('workers'),sf=sf,rc=r.returncode,
      dps=round(d.get('deliveries_per_second',0)),cpu=d.get('server_cpu_us_per_delivery'),
      p50=l.get('p50'),p99=l.get('p99'),req_p99=q.get('p99'),ach=d.get('publish_rate_achieved'),loss=d.get('loss'),
      refused=d.get('publishes_refused'),closed=d.get('closed_by_server'),ts=time.strftime('%H:%M:%S'))
    out.write(json.dumps(rec)+'\n'); out.flush(); print(json.dumps(rec), flush=True)
    os.remove(JSON) if os.path.exists(JSON) else None
plan=json.loads(sys.argv[1])
for row in plan:
    subs,pubs,rates,channels=row[:4]
    opts=row[4] if len(row)>4 else {}
    for rate in rates:
        for server in ('base','sb'):
            run(server,subs,pubs,rate,channels,opts)
