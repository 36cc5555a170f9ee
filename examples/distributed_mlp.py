"""Data-parallel training in a few lines: mpiexec -n 2 python examples/distributed_mlp.py"""

import npgrad
from npgrad import distributed, nn, optim

comm = distributed.Communicator()  # this process's rank among comm.size
ds = npgrad.data.load_dataset("digits")
x = npgrad.data.to_float(ds.train_images, ds.pixel_max).reshape(len(ds.train_labels), -1)
net = nn.MLP([64, 128, 10], rng=0)  # the same start on every rank
opt = optim.Adam(net.parameters(), 1e-2)
grads = distributed.GradientBuffer(opt.params)  # one flat buffer: one Allreduce a step
batches = npgrad.data.DataLoader(x, ds.train_labels, batch_size=64, rng=1)  # alike on all ranks
for _ in range(20):  # epochs
    for xb, yb, batch in distributed.DistributedLoader(batches, comm):  # this rank's shard
        loss = npgrad.cross_entropy(net(npgrad.tensor(xb)), yb, reduction="sum") * (1 / batch)
        opt.zero_grad()
        loss.backward()
        distributed.allreduce_gradients(grads, comm)  # the shards' sum: the batch's gradient
        opt.step()
if comm.root:
    xt = npgrad.data.to_float(ds.test_images, ds.pixel_max).reshape(len(ds.test_labels), -1)
    with npgrad.no_grad():
        hits = (net.eval()(npgrad.tensor(xt)).data.argmax(axis=1) == ds.test_labels).mean()
    print(f"{comm.size} ranks, 20 epochs: test accuracy {hits:.1%}")
