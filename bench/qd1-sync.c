/* QD1 SYNC 4 KiB random reads (O_DIRECT file), N IOs, prints mean/p50/p99 us. */
#include <dm_io.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>
static double now_us(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
int main(int argc,char**argv){
	const char*path=argv[1];int n=atoi(argv[2]);int wr=argc>3&&argv[3][0]=='w';
	struct dm_io_client*cl;struct block_device*d;
	if(dm_io_client_create(1,16,4096,&cl)||dm_io_bdev_open(path,0,&d)){fprintf(stderr,"%s\n",dm_io_last_error());return 1;}
	uint64_t sectors=dm_io_bdev_sectors(d);void*buf;posix_memalign(&buf,4096,4096);
	double*lat=malloc(n*sizeof(double));unsigned seed=1;
	for(int i=-1000;i<n;i++){
		uint64_t s=(rand_r(&seed)%(sectors/8))*8;
		struct dm_io_region r={d,s,8};
		struct dm_io_control c={.memory={.type=DM_IO_VM,.ptr.vma=buf},.rw=(wr?DM_IO_WRITE:DM_IO_READ)|DM_IO_SYNC,.client=cl,.timeout=5000};
		double t0=now_us();int rc=dm_io(&c,1,&r,NULL);double t=now_us()-t0;
		if(rc){fprintf(stderr,"rc %d\n",rc);return 1;}
		if(i>=0)lat[i]=t;
	}
	double sum=0;for(int i=0;i<n;i++)sum+=lat[i];qsort(lat,n,sizeof(double),cmp);
	printf("%s QD1 SYNC %s 4k: n=%d mean %.1f us p50 %.1f p99 %.1f (%.0f IOPS)\n",getenv("DMIO_SYNC_RING")?:"-",wr?"write":"read",n,sum/n,lat[n/2],lat[n*99/100],1e6*n/sum);
	return 0;}
