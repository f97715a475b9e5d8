# second server (q2.toml: tenant max_sessions=1, allowed_origins=["http://ok.example"], drain 4s):
# over_quota 3008 on WT/WS/SSE; Origin refusals on WT/WS/SSE
import asyncio, time, httpx
import qp
from qp import *
qp.WT_PORT, qp.HTTP_PORT = 29010, 29011
def L(ev): return [(e['type'], e.get('id'), e.get('code'), (e.get('reason') or '')[:50], e.get('t'), e.get('close')) for e in ev]
async def main():
    hold = await WS.open(token(tenant='q')); print('holder', (await welcome(hold))['type'])
    c = await WT.open(token(tenant='q'), hello=False); c.open_ctrl(); await asyncio.sleep(0.3)
    pre = await c.drain(0.3); await c.send(Hello(7)); ev = await c.drain(0.8)
    print('WT over quota: before Hello', L(pre), 'after Hello', L(ev)); await c.close()
    c = await WS.open(token(tenant='q'), hello=False); ev = await c.drain(0.8)
    print('WS over quota (no Hello sent)', L(ev)); await c.close()
    r = httpx.get(f'http://127.0.0.1:29011/v1/sse?token={token(tenant="q")}&room=chat.a', timeout=2)
    print('SSE over quota', r.status_code, r.text.replace('\n', ' | ')[:250])
    await hold.close()
    # Origin
    for o in (b'http://ok.example', b'http://evil.example'):
        c = await WT.open(token(tenant='o'), extra_headers=[(b'origin', o)]); print('WT origin', o, c.status); await c.close()
        try:
            w = await WS.open(token(tenant='o'), headers={'Origin': o.decode()}); print('WS origin', o, (await welcome(w))['type']); await w.close()
        except Exception as ex: print('WS origin', o, repr(ex)[:100])
        r = httpx.get(f'http://127.0.0.1:29011/v1/sse?token={token(tenant="o")}&room=chat.a', headers={'Origin': o.decode()}, timeout=httpx.Timeout(2, read=0.5)) if o == b'http://evil.example' else None
        if r is not None: print('SSE origin', o, r.status_code, r.text[:80])
    c = await WT.open(token(tenant='o'), extra_headers=[(b'origin', b'http://evil.example'), (b'origin', b'http://ok.example')]); print('WT origin evil then ok', c.status); await c.close()
    c = await WT.open(token(tenant='o'), extra_headers=[(b'origin', b'http://ok.example'), (b'origin', b'http://evil.example')]); print('WT origin ok then evil', c.status); await c.close()
asyncio.run(main())
